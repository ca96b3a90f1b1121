"""Library calls and `refspec bench decode` where a review found them misleading: dump stopping at an
end-of-generation token, dump converting what is not a token id, drafters made without a Transformer, a cache of
ten million recurrent states, --draft-max checked only after minutes of work, options silently ignored, n-gram
drafter settings that fail later or build a billion guesses, and prompts given as sets. Each wrong argument is one
UsageError (one line), before any work; on tiny synthetic models, on the CPU."""
import subprocess
import sys

import numpy as np
import pytest

from refspec import bench_decode, golden
from refspec.backends import CpuBackend
from refspec.cli import build_parser, main
from refspec.errors import UsageError
from refspec.forward import Transformer
from refspec.generate import generate, model_eog_ids
from refspec.gguf_model import load
from refspec.speculative import (MAX_DRAFT, Drafter, LayerSkipDrafter, MtpDrafter, NgramDrafter, make_drafter,
                                 speculative_generate)
from refspec.synthetic import write_model
from conftest import one_line_error

N_PREDICT = 20


def refspec(*args, env=None):
    return subprocess.run([sys.executable, "-m", "refspec.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(path, Model, Transformer) of a one-layer llama model of 64 positions."""
    path = write_model(tmp_path_factory.mktemp("review") / "t.gguf", arch="llama", n_ctx=64, seed=3, n_layer=1,
                       n_embd=32, n_ff=64, n_head=2, n_head_kv=1)
    model = load(path, log=lambda line: None)
    return path, model, Transformer(model, CpuBackend())


@pytest.fixture(scope="module")
def stops_early(tiny):
    """A one-token prompt whose greedy continuation reaches one of the model's end-of-generation ids within
    N_PREDICT tokens (found by trying every prompt id in order: deterministic)."""
    _, model, tf = tiny
    assert model_eog_ids(tf), "the synthetic model names no end-of-generation id"
    for token in range(model.config.n_vocab):
        result = generate(tf, [token], N_PREDICT)
        if result.stop_reason == "eog" and len(result.ids) < N_PREDICT:
            return [token]
    pytest.fail("no prompt of one token reaches an end-of-generation id within N_PREDICT tokens")


# --- 1. dump records exactly n_predict tokens --------------------------------------------------------------
def test_dump_does_not_stop_at_end_of_generation(tiny, stops_early):
    _, model, tf = tiny
    g = golden.dump(model, stops_early, N_PREDICT, device="cpu")
    assert len(g.token_ids) == 1 + N_PREDICT and g.n_prompt == 1
    everything = generate(tf, stops_early, N_PREDICT, eog_ids=()).ids
    assert g.token_ids.tolist() == stops_early + everything
    assert set(everything) & model_eog_ids(tf)  # (an end-of-generation id is among the tokens recorded)


def test_cli_dump_n_records_every_token(tiny, stops_early, tmp_path):
    path, _, _ = tiny
    out = tmp_path / "x.safetensors"
    proc = refspec("dump", "-m", str(path), "--ids", str(stops_early[0]), "-n", str(N_PREDICT), "-o", str(out),
                   "--json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert '"positions": 21' in proc.stdout and '"n_prompt": 1' in proc.stdout


# --- 2. dump checks its ids, converting nothing --------------------------------------------------------------
@pytest.mark.parametrize("ids, message", [
    ([1.7, 2.9], "prompt_ids[0] must be an integer, not float 1.7"),
    ("123", "prompt_ids must be a sequence of token ids, not str"),
    ([True, False], "prompt_ids[0] must be an integer, not a bool"),
    (None, "prompt_ids must be a sequence of token ids, not NoneType"),
    ([None], "prompt_ids[0] must be an integer, not NoneType"),
    (["a"], "prompt_ids[0] must be an integer, not str 'a'"),
    ([5, 10**6], "prompt_ids[1] is 1000000, must be in 0..282"),
    ({3, 1, 2}, "prompt_ids must be a sequence of token ids in order (a list, a tuple, a 1-D array), not a set"),
    ({3: 1}, "not a dict: iterating it gives its keys"),
    (np.array([[1, 2]]), "prompt_ids must be a 1-D sequence of token ids, not a ndarray of 2 dimensions"),
    ([], "the prompt is empty"),
])
def test_dump_refuses_what_is_not_token_ids(tiny, ids, message):
    _, model, _ = tiny
    with pytest.raises(UsageError) as err:
        golden.dump(model, ids, 1, device="cpu")
    assert message in str(err.value)


@pytest.mark.parametrize("ids", [(5, 6), range(5, 7), np.array([5, 6], np.int64), (t for t in [5, 6]),
                                 iter([5, 6])])
def test_dump_takes_any_ordered_sequence_of_ids(tiny, ids):
    _, model, _ = tiny
    g = golden.dump(model, ids, 2, device="cpu")
    assert g.token_ids.tolist()[:2] == [5, 6] and len(g.token_ids) == 4 and g.n_prompt == 2


# --- 3. drafters that run the model need a Transformer -------------------------------------------------------
@pytest.mark.parametrize("name", ["layerskip", "mtp"])
def test_model_drafters_refuse_what_is_not_a_transformer(tiny, name):
    _, model, _ = tiny
    for tf, what in ((None, "NoneType"), (model, "Model")):
        with pytest.raises(UsageError, match=rf"the {name} drafter needs a Transformer \(refspec.Transformer\(model, "
                                             rf"backend\)\), got {what}$"):
            make_drafter(name, tf)
    with pytest.raises(UsageError, match="needs a Transformer"):
        (LayerSkipDrafter if name == "layerskip" else MtpDrafter)("tf")


# --- 4. a cache holds at most a state per position ----------------------------------------------------------
@pytest.mark.parametrize("n_states", [10**7, 10**6, 10, 0, -1])
def test_new_cache_bounds_its_recurrent_states(tiny, n_states):
    _, _, tf = tiny
    with pytest.raises(UsageError, match=rf"^n_states is {n_states}, must be in 1\.\.9: recurrent-state slots of a "
                                         r"cache of 8 positions"):
        tf.new_cache(8, n_states=n_states)


def test_new_cache_takes_up_to_a_state_per_position_and_one(tiny):
    _, _, tf = tiny
    assert tf.new_cache(8, n_states=np.int64(9)).n_states == 9 and type(tf.new_cache(8, n_states=9).n_states) is int
    assert tf.new_cache(None, n_states=65).n_states == 65  # None: the model's context, 64 positions
    with pytest.raises(UsageError, match="n_states must be an integer, not float"):
        tf.new_cache(8, n_states=2.0)


def test_speculative_decoding_of_few_tokens_with_many_guesses(tmp_path):
    """A verify pass may guess up to MAX_DRAFT tokens, more than a short request's cache has positions: its
    ring of recurrent states is as long as the cache (qwen35's DeltaNet layers), and the tokens are greedy's."""
    path = write_model(tmp_path / "q35.gguf", arch="qwen35", n_layer=2, n_ctx=64, seed=1)
    tf = Transformer(load(path, log=lambda line: None), CpuBackend())
    prompt = [5, 6, 7, 5, 6]
    for n in (1, 3, 8):
        want = generate(tf, prompt, n, eog_ids=())
        got = speculative_generate(tf, prompt, n, drafter=NgramDrafter(), draft_max=MAX_DRAFT, eog_ids=())
        assert got.ids == want.ids and got.stop_reason == want.stop_reason


# --- 5, 6. bench decode checks its options before any work, and says which it ignores ------------------------
def test_bench_decode_checks_draft_max_before_any_work(tiny):
    path, _, _ = tiny
    for value in ("65", "0"):
        line = one_line_error(refspec("bench", "decode", "-m", str(path), "--device", "cpu", "--quick",
                                      "--draft-max", value))
        assert line == f"refspec: error: --draft-max must be in 1..{MAX_DRAFT} (the most guesses a verify pass " \
                       f"takes), got {value}"


def test_bench_decode_takes_a_model_or_a_preset_not_both(tiny, monkeypatch, capsys):
    path, _, _ = tiny

    def no_preset(*args):
        raise AssertionError("the preset's model was written although -m was given")

    monkeypatch.setattr(bench_decode, "preset_model_path", no_preset)
    assert main(["bench", "decode", "-m", str(path), "--preset", "llama-8b", "--device", "cpu"]) == 1
    assert capsys.readouterr().err == (f"refspec: error: -m {path} and --preset llama-8b both name the model to "
                                       "time: give one\n")


def bench_args(*args):
    return build_parser().parse_args(["bench", "decode", *args])


@pytest.mark.parametrize("args, notes", [
    ((), []),
    (("--quick",), []),
    (("--quick", "--draft-max", "3"), []),  # (--quick runs the copy prompts: it takes --draft-max)
    (("--repeats", "5", "--n-predict", "9", "--draft-max", "3"), []),
    (("--quick", "--repeats", "5"), ["note: --repeats 5 ignored: --quick runs every measurement once, with 16 new "
                                     "tokens per copy prompt"]),
    (("--quick", "--repeats", "5", "--n-predict", "9"),
     ["note: --repeats 5, --n-predict 9 ignored: --quick runs every measurement once, with 16 new tokens per copy "
      "prompt"]),
    (("--preset", "llama-8b", "--draft-max", "3", "--n-predict", "9"),
     ["note: --n-predict 9, --draft-max 3 ignored: --preset times greedy decoding only (its random weights copy "
      "nothing: no copy prompts run)"]),
    (("--preset", "llama-8b", "--repeats", "2"), []),
    (("--preset", "llama-8b", "--quick", "--repeats", "2", "--n-predict", "9"),
     ["note: --n-predict 9 ignored: --preset times greedy decoding only (its random weights copy nothing: no copy "
      "prompts run)", "note: --repeats 2 ignored: --quick runs every measurement once"]),
])
def test_bench_decode_names_the_options_it_ignores(args, notes):
    assert bench_decode.ignored_options(bench_args(*args)) == notes


def test_bench_decode_notes_an_ignored_option_before_the_run(tiny):
    """The note comes before anything runs (here the run then stops: 64 positions are too few for the copy
    prompts)."""
    path, _, _ = tiny
    proc = refspec("bench", "decode", "-m", str(path), "--device", "cpu", "--quick", "--repeats", "5")
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 2, proc.stderr
    assert lines[0] == ("refspec: note: --repeats 5 ignored: --quick runs every measurement once, with 16 new "
                        "tokens per copy prompt")
    assert lines[1].startswith("refspec: error: the copy prompt")


def test_bench_decode_defaults_are_unchanged():
    args = bench_args()
    assert (args.repeats, args.n_predict, args.draft_max) == (None, None, None)  # None: not given
    assert (bench_decode.REPEATS, bench_decode.COPY_NEW_TOKENS) == (3, 128)


# --- 7. the n-gram drafter's settings and k ------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"max_n": 2.5}, "max_n must be an integer, not float 2.5"),
    ({"max_n": "4"}, "max_n must be an integer, not str '4'"),
    ({"max_n": True}, "max_n must be an integer, not a bool"),
    ({"max_n": 0}, "max_n is 0, must be in 1..64"),
    ({"max_n": 10**6}, "max_n is 1000000, must be in 1..64"),
    ({"min_n": 1.0}, "min_n must be an integer, not float 1.0"),
    ({"min_n": None}, "min_n must be an integer, not NoneType None"),
    ({"min_n": 0}, "min_n is 0, must be at least 1"),
    ({"max_n": 2, "min_n": 3}, "n-gram sizes must satisfy 1 <= min_n <= max_n, got 3, 2"),
])
def test_ngram_drafter_checks_its_settings(kwargs, message):
    with pytest.raises(UsageError) as err:
        NgramDrafter(**kwargs)
    assert str(err.value) == message


def test_ngram_drafter_takes_numpy_settings():
    d = NgramDrafter(max_n=np.int64(3), min_n=np.int32(2))
    assert (d.max_n, d.min_n) == (3, 2) and type(d.max_n) is int


def test_a_proposal_has_at_most_max_draft_guesses(tiny):
    _, _, tf = tiny
    with pytest.raises(UsageError, match=rf"^k is 1000000000, must be in 0\.\.{MAX_DRAFT}$"):
        NgramDrafter().propose([1, 2, 1, 2], 10**9)
    assert NgramDrafter().propose([1, 2, 1, 2], MAX_DRAFT) == [1, 2] * (MAX_DRAFT // 2)
    with pytest.raises(UsageError, match=r"^k is 65, must be in 0\.\.64$"):
        LayerSkipDrafter(tf).propose([1, 2], 65)


# --- 8. an order is needed where ids are a sequence ----------------------------------------------------------
@pytest.mark.parametrize("ids, why", [({3, 1, 2}, "set: its order is arbitrary"),
                                      (frozenset({3, 1}), "frozenset: its order is arbitrary"),
                                      ({3: 0, 1: 0}, "dict: iterating it gives its keys"),
                                      ({3: 0}.keys(), "dict_keys: its order is arbitrary")])
def test_forward_refuses_unordered_ids(tiny, ids, why):
    _, _, tf = tiny
    with pytest.raises(UsageError, match=f"^ids must be a sequence of token ids in order .*, not a {why}$"):
        tf.forward(tf.new_cache(4), ids, 0)


@pytest.mark.parametrize("prompt", [{3, 1, 2}, {3: 0, 1: 0}])
def test_generate_refuses_an_unordered_prompt(tiny, prompt):
    _, _, tf = tiny
    with pytest.raises(UsageError, match="prompt_ids must be a sequence of token ids in order"):
        generate(tf, prompt, 2)


def test_end_of_generation_ids_may_still_be_a_set(tiny):
    _, _, tf = tiny
    assert generate(tf, [5, 6], 3, eog_ids=frozenset({1, 2})).stop_reason in ("eog", "max_tokens")
    assert generate(tf, [5, 6], 3, eog_ids={1}).stop_reason in ("eog", "max_tokens")


def test_a_zero_dimensional_array_is_no_sequence(tiny):
    _, _, tf = tiny
    with pytest.raises(UsageError, match="ids must be a 1-D sequence of token ids, not a ndarray of 0 dimensions"):
        tf.forward(tf.new_cache(4), np.array(5), 0)


def test_a_drafter_proposing_a_set_is_refused(tiny):
    _, _, tf = tiny

    class SetDrafter(Drafter):
        name = "set"

        def propose(self, context, k):
            return {1, 2}

    with pytest.raises(UsageError, match="drafter 'set': its guesses must be a sequence of token ids in order"):
        speculative_generate(tf, [5, 6], 4, drafter=SetDrafter(), draft_max=2, eog_ids=())
