"""Careless calls: every public function checks its arguments and raises refspec's own errors (UsageError and
friends), never TypeError/IndexError/ValueError from inside, and never quietly converts a wrong value."""
import itertools
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGUFValueType
from gguf.gguf_writer import GGUFValue

from refspec import compare, golden, llamacpp, synthetic
from refspec.backends import CpuBackend, make_backend
from refspec.default_model import default_model_path
from refspec.errors import UsageError
from refspec.forward import Transformer
from refspec.generate import generate
from refspec.gpu import GpuBackend
from refspec.gguf_model import load
from refspec.speculative import Drafter, LayerSkipDrafter, make_drafter, speculative_generate
from refspec.tokenizer import Tokenizer


LOADED = {}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    path = synthetic.write_model(tmp_path_factory.mktemp("misuse") / "m.gguf", n_layer=2, n_ctx=64)
    model = LOADED["model"] = load(path, log=lambda m: None)
    tf = Transformer(model, make_backend("cpu"))
    return tf, Tokenizer.from_metadata(model.metadata), tf.new_cache(16)


class Proposes(Drafter):
    """A drafter whose every proposal is `proposal()`."""

    def __init__(self, proposal):
        self.proposal = proposal

    def propose(self, context, k):
        return self.proposal()


def speculate_with(tf, proposal):
    return speculative_generate(tf, [1, 2, 3], 4, drafter=Proposes(proposal), draft_max=3, eog_ids=())


CALLS = {  # name: (call(tf, tok, cache), fragment of the UsageError)
    "load(None)": (lambda tf, tok, c: load(None), "str or os.PathLike, not NoneType"),
    "load(NUL in path)": (lambda tf, tok, c: load("model\0.gguf"), "NUL"),
    "load(bytes)": (lambda tf, tok, c: load(b"model.gguf"), "not bytes"),
    "load('')": (lambda tf, tok, c: load(""), "empty"),
    "load(log=3)": (lambda tf, tok, c: load(LOADED["model"].path, log=3), "log must be callable"),
    "golden.dump(layers='yes')": (lambda tf, tok, c: golden.dump(LOADED["model"], [1, 2], 1, layers="yes"),
                                  "layers must be True or False"),
    "compare_files(threshold=-1)": (lambda tf, tok, c: compare.compare_files("a", "b", -1.0),
                                    "nmse_threshold must be 0 or more"),
    "Transformer(graphs='yes')": (lambda tf, tok, c: Transformer(LOADED["model"], make_backend("cpu"), graphs="yes"),
                                  "graphs must be True or False"),
    "float token id": (lambda tf, tok, c: tf.forward(c, [5.0], 0), "ids[0] must be an integer, not float"),
    "bool token id": (lambda tf, tok, c: tf.forward(c, [True], 0), "not a bool"),
    "token id out of range": (lambda tf, tok, c: tf.forward(c, [tf.config.n_vocab], 0), "ids[0] is"),
    "no token ids": (lambda tf, tok, c: tf.forward(c, [], 0), "empty"),
    "ids as a string": (lambda tf, tok, c: tf.forward(c, "12", 0), "not str"),
    "negative position": (lambda tf, tok, c: tf.forward(c, [5], -5), "pos0 is -5, must be at least 0"),
    "position 3 of a fresh cache": (lambda tf, tok, c: tf.forward(tf.new_cache(16), [5], 3),
                                    "positions 0..2 of this cache never ran"),
    "float position": (lambda tf, tok, c: tf.forward(c, [5], 1.5), "pos0 must be an integer"),
    "layers=[7] on 2 layers": (lambda tf, tok, c: tf.forward(c, [5], 0, layers=[7]), "layers[0] is 7, must be in 0..1"),
    "layers out of order": (lambda tf, tok, c: tf.forward(c, [5], 0, layers=[1, 0]), "increasing"),
    "cache not a cache": (lambda tf, tok, c: tf.forward(None, [5], 0), "KVCache"),
    "Transformer(None, backend)": (lambda tf, tok, c: Transformer(None, make_backend("cpu")), "takes a Model"),
    "Transformer(model, None)": (lambda tf, tok, c: Transformer(LOADED["model"], None), "and a backend"),
    "new_cache(-1)": (lambda tf, tok, c: tf.new_cache(-1), "n_pos is -1, must be at least 1"),
    "new_cache(2.5)": (lambda tf, tok, c: tf.new_cache(2.5), "n_pos must be an integer, not float"),
    "taps not callable": (lambda tf, tok, c: tf.forward(c, [5], 0, taps=3), "taps must be callable"),
    "encode(bytes)": (lambda tf, tok, c: tok.encode(b"abc"), "encode takes text (str), not bytes"),
    "encode(add_bos='no')": (lambda tf, tok, c: tok.encode("a", add_bos="no"), "add_bos must be True or False"),
    "decode(floats)": (lambda tf, tok, c: tok.decode([1.5]), "token id must be an integer, not float"),
    "decode(str)": (lambda tf, tok, c: tok.decode("abc"), "not str"),
    "decode(continuation='yes')": (lambda tf, tok, c: tok.decode([1], continuation="yes"),
                                   "continuation must be True or False"),
    "decode(skip_special=1)": (lambda tf, tok, c: tok.decode([1], skip_special=1), "skip_special must be True or False"),
    "stream(skip_special='x')": (lambda tf, tok, c: tok.stream(skip_special="x"), "skip_special must be True or False"),
    "forward(hidden='yes')": (lambda tf, tok, c: tf.forward(c, [5], 0, hidden="yes"), "hidden must be True or False"),
    "default_model_path(fetch='no')": (lambda tf, tok, c: default_model_path(fetch="no"),
                                       "fetch must be True or False"),
    "token_text(None)": (lambda tf, tok, c: tok.token_text(None), "not NoneType"),
    "chat messages a string": (lambda tf, tok, c: tok.apply_chat_template("hi"), "list of dicts"),
    "chat messages not JSON": (lambda tf, tok, c: tok.apply_chat_template([{"role": "user", "content": {1, 2}}]),
                               "JSON"),
    "from_metadata(list)": (lambda tf, tok, c: Tokenizer.from_metadata([]), "mapping"),
    "generate(n=2.5)": (lambda tf, tok, c: generate(tf, [1, 2], 2.5), "n_predict must be an integer, not float"),
    "generate(n=0)": (lambda tf, tok, c: generate(tf, [1, 2], 0), "n_predict is 0"),
    "generate(n=-5)": (lambda tf, tok, c: generate(tf, [1, 2], -5), "n_predict is -5"),
    "generate(n=True)": (lambda tf, tok, c: generate(tf, [1, 2], True), "not a bool"),
    "generate(float prompt)": (lambda tf, tok, c: generate(tf, [1.0, 2], 2), "prompt_ids[0] must be an integer"),
    "generate(tf=None)": (lambda tf, tok, c: generate(None, [1, 2], 2), "Transformer"),
    "generate(on_token=1)": (lambda tf, tok, c: generate(tf, [1, 2], 2, on_token=1), "on_token must be callable"),
    "speculative draft_max 2**40": (lambda tf, tok, c: speculative_generate(
        tf, [1, 2], 2, drafter=make_drafter("ngram", tf), draft_max=2**40), "draft_max is 1099511627776"),
    "speculative drafter a string": (lambda tf, tok, c: speculative_generate(tf, [1, 2], 2, drafter="ngram"),
                                     "Drafter"),
    "speculative adaptive 'yes'": (lambda tf, tok, c: speculative_generate(
        tf, [1, 2], 2, drafter=make_drafter("ngram", tf), adaptive="yes"), "adaptive must be True or False"),
    "speculative chain 'yes'": (lambda tf, tok, c: speculative_generate(
        tf, [1, 2], 2, drafter=make_drafter("ngram", tf), chain="yes"), "chain must be True or False"),
    "drafter proposes None": (lambda tf, tok, c: speculate_with(tf, lambda: None), "guesses must be a sequence"),
    "drafter proposes a string": (lambda tf, tok, c: speculate_with(tf, lambda: "12"), "not str"),
    "drafter proposes a float": (lambda tf, tok, c: speculate_with(tf, lambda: [1.5]), "guesses[0] must be an integer"),
    "drafter proposes a bool": (lambda tf, tok, c: speculate_with(tf, lambda: [True]), "guesses[0] must be an integer"),
    "drafter proposes past the vocabulary": (lambda tf, tok, c: speculate_with(tf, lambda: [tf.config.n_vocab]),
                                             "its guesses[0] is"),
    "another Transformer's cache": (lambda tf, tok, c: Transformer(LOADED["model"], make_backend("cpu")).forward(c, [5], 0),
                                    "made by another Transformer's new_cache()"),
    "another Transformer's drafter": (lambda tf, tok, c: speculative_generate(
        tf, [1, 2], 2, drafter=LayerSkipDrafter(Transformer(LOADED["model"], make_backend("cpu")))),
        "the drafter was made for another Transformer"),
    "layer-skip layers=[7]": (lambda tf, tok, c: LayerSkipDrafter(tf, layers=[7]), "layers[0] is 7"),
    "layer-skip layers=[0.5]": (lambda tf, tok, c: LayerSkipDrafter(tf, layers=[0.5]), "not float"),
    "unknown drafter": (lambda tf, tok, c: make_drafter("psychic", tf), "unknown drafter"),
    "unknown device": (lambda tf, tok, c: make_backend("tpu"), "unknown device"),
    "make_backend(threads=0)": (lambda tf, tok, c: make_backend("cpu", threads=0), "threads is 0, must be at least 1"),
    "make_backend(threads='2')": (lambda tf, tok, c: make_backend("auto", threads="2"), "threads must be an integer"),
    "CpuBackend(threads=-3)": (lambda tf, tok, c: CpuBackend(threads=-3), "threads is -3, must be at least 1"),
    "CpuBackend(threads=2.5)": (lambda tf, tok, c: CpuBackend(threads=2.5), "threads must be an integer"),
    "CpuBackend(resident_bytes='x')": (lambda tf, tok, c: CpuBackend(resident_bytes="x"),
                                       "resident_bytes must be an integer"),
    "CpuBackend(resident_bytes=-1)": (lambda tf, tok, c: CpuBackend(resident_bytes=-1), "resident_bytes is -1"),
    "CpuBackend(log=5)": (lambda tf, tok, c: CpuBackend(log=5), "log must be callable"),
    "golden.load(None)": (lambda tf, tok, c: golden.load(None), "a golden file path must be a str or os.PathLike"),
    "golden.save(None, path)": (lambda tf, tok, c: golden.save(None, "/nonexistent/g.safetensors"),
                                "save takes a Golden"),
    "golden.save(golden, 3)": (lambda tf, tok, c: golden.save(golden.Golden(np.zeros(1, np.int32), {}, {}), 3),
                               "golden file path must be"),
    "golden.dump(n='3')": (lambda tf, tok, c: golden.dump(LOADED["model"], [1, 2], "3"),
                           "n_predict must be an integer, not str"),
    "llamacpp.dump(n_threads=0)": (lambda tf, tok, c: llamacpp.dump(LOADED["model"], [1, 2], 1, n_threads=0),
                                   "n_threads is 0"),
    "llamacpp.dump(n='3')": (lambda tf, tok, c: llamacpp.dump(LOADED["model"], [1, 2], "3"),
                             "n_predict must be an integer"),
    "llamacpp.dump(kv_cache=[])": (lambda tf, tok, c: llamacpp.dump(LOADED["model"], [1, 2], 1, kv_cache=[]),
                                   "kv_cache must be one of"),
    "GpuBackend(mma_min_weights=-1)": (lambda tf, tok, c: GpuBackend(mma_min_weights=-1),
                                       "mma_min_weights is -1, must be at least 0"),
    "GpuBackend(mma_min_rows=0)": (lambda tf, tok, c: GpuBackend(mma_min_rows=0), "mma_min_rows is 0, must be in 1..16"),
    "write_model(n_layer=-1)": (lambda tf, tok, c: synthetic.write_model("/nonexistent/x.gguf", n_layer=-1), "n_layer"),
    "write_model(seed=-1)": (lambda tf, tok, c: synthetic.write_model("/nonexistent/x.gguf", seed=-1), "seed"),
    "write_model(eps=nan)": (lambda tf, tok, c: synthetic.write_model("/nonexistent/x.gguf", eps=float("nan")), "eps"),
}


@pytest.mark.parametrize("case", sorted(CALLS))
def test_misuse_raises_a_usage_error(parts, case):
    call, fragment = CALLS[case]
    with pytest.raises(UsageError) as info:
        call(*parts)
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_right_calls_still_work(parts):
    tf, tok, cache = parts
    logits = tf.forward(cache, np.array([5, 6]), 0, layers=[0, 1])  # NumPy integers are integers
    assert logits.shape == (2, tf.config.n_vocab)
    assert tf.forward(cache, [7], 2).shape == (1, tf.config.n_vocab)  # after the positions before it
    want = generate(tf, [1, 2, 3], 4, eog_ids=()).ids
    for proposal in (lambda: itertools.count(1), lambda: np.arange(1, 100), lambda: []):  # endless, many, none
        assert speculate_with(tf, proposal).ids == want
    assert generate(tf, tok.encode("hello"), -1).stop_reason in ("eog", "context")
    assert tok.decode(tok.encode("hello world")) == "hello world"


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory):
    """A model whose first norm weights overflow the activations: its logits are NaN."""
    directory = tmp_path_factory.mktemp("nan")
    path = synthetic.write_model(directory / "f32.gguf", n_layer=2, n_ctx=64, weight_type="F32")
    return synthetic.rewrite_gguf(path, directory / "nan.gguf", drop=["blk.0.attn_norm.weight"],
                                  add_tensors={"blk.0.attn_norm.weight": np.full(64, 3e38, np.float32)})


@pytest.mark.parametrize("draft", ["none", "ngram", "layerskip"])
def test_nan_logits_print_one_line_and_no_numpy_warnings(nan_model, draft):
    proc = subprocess.run([sys.executable, "-W", "default", "-m", "refspec.cli", "generate", "-m", str(nan_model),
                           "-p", "hello", "-n", "4", "--device", "cpu", "--draft", draft],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Warning" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == [line for line in proc.stderr.splitlines() if line.startswith("refspec: error: ")]
    assert len(errors) == 1 and "NaN or infinity" in errors[0]


def test_a_chat_template_that_is_not_a_string_fails_in_one_line(tmp_path):
    path = synthetic.write_model(tmp_path / "m.gguf", n_layer=1, n_ctx=64)
    bad = synthetic.rewrite_gguf(path, tmp_path / "bad.gguf",
                                 metadata={"tokenizer.chat_template": GGUFValue(7, GGUFValueType.UINT32)})
    proc = subprocess.run([sys.executable, "-m", "refspec.cli", "generate", "-m", str(bad), "--chat", "-p", "hi",
                           "-n", "2", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.splitlines()[-1] == (
        "refspec: error: metadata tokenizer.chat_template is an integer, expected a string")
