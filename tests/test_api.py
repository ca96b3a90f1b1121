"""The public Python API: generate() and speculative_generate() stop at the model's end-of-generation ids
unless told otherwise, as Hugging Face's generate stops at EOS."""
import pytest
from gguf import GGUFReader

import refspec
from refspec.synthetic import rewrite_gguf, write_model


@pytest.fixture(scope="module")
def tf_and_first(tmp_path_factory):
    """A tiny model whose first greedy token after the prompt [5, 6, 7] is made its EOS (and a control token)."""
    tmp = tmp_path_factory.mktemp("api")
    plain = write_model(tmp / "plain.gguf", arch="qwen3", seed=11)
    tf = refspec.Transformer(refspec.load(plain, log=lambda m: None), refspec.make_backend("cpu"))
    first = refspec.generate(tf, [5, 6, 7], 1, eog_ids=()).ids[0]
    types = GGUFReader(plain).fields["tokenizer.ggml.token_type"].contents()
    types[first] = 3
    eos = rewrite_gguf(plain, tmp / "eos.gguf", metadata={"tokenizer.ggml.eos_token_id": first,
                                                          "tokenizer.ggml.token_type": types})
    model = refspec.load(eos, log=lambda m: None)
    assert first in refspec.Tokenizer.from_metadata(model.metadata).eog_ids
    return refspec.Transformer(model, refspec.make_backend("cpu")), first


def test_generate_stops_at_the_models_eog_by_default(tf_and_first):
    tf, first = tf_and_first
    result = refspec.generate(tf, [5, 6, 7], 8)
    assert result.ids == [first] and result.stop_reason == "eog"
    full = refspec.generate(tf, [5, 6, 7], 8, eog_ids=())
    assert len(full.ids) == 8 and full.ids[0] == first and full.stop_reason == "max_tokens"


def test_speculative_generate_stops_where_generate_does(tf_and_first):
    tf, first = tf_and_first
    drafter = refspec.make_drafter("ngram", tf)
    assert refspec.speculative_generate(tf, [5, 6, 7], 8, drafter=drafter).ids == [first]
    full = refspec.speculative_generate(tf, [5, 6, 7], 8, drafter=drafter, eog_ids=())
    assert full.ids == refspec.generate(tf, [5, 6, 7], 8, eog_ids=()).ids


def test_a_model_without_a_vocabulary_never_stops_early(tmp_path):
    path = write_model(tmp_path / "ids.gguf", arch="llama", seed=2, tokenizer=False)
    tf = refspec.Transformer(refspec.load(path, log=lambda m: None), refspec.make_backend("cpu"))
    assert len(refspec.generate(tf, [1, 2], 5).ids) == 5


@pytest.mark.parametrize("vocab", ["bpe", "spm"])
@pytest.mark.parametrize("drop", [(), ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")])
def test_end_of_generation_ids_are_the_tokenizers(tmp_path, vocab, drop):
    from refspec.gguf_model import read_header
    from refspec.tokenizer import end_of_generation_ids

    path = write_model(tmp_path / "m.gguf", arch="llama", seed=1, vocab=vocab)
    if drop:  # llama.cpp's defaults fill the missing ids (SentencePiece: BOS 1, EOS 2)
        path = rewrite_gguf(path, tmp_path / "dropped.gguf", drop=set(drop))
    metadata = read_header(path).metadata
    assert end_of_generation_ids(metadata) == refspec.Tokenizer.from_metadata(metadata).eog_ids


def test_on_prompt_reports_the_prompts_pass_chunk_by_chunk(tf_and_first, capsys, monkeypatch):
    tf, _ = tf_and_first
    prompt = [(7 * i) % 200 + 3 for i in range(150)]  # three chunks of the prompt's pass: 64, 64, 22
    seen = {"greedy": [], "ngram": []}
    plain = refspec.generate(tf, prompt, 3, eog_ids=())
    with_progress = refspec.generate(tf, prompt, 3, eog_ids=(), on_prompt=lambda *a: seen["greedy"].append(a))
    fast = refspec.speculative_generate(tf, prompt, 3, drafter=refspec.make_drafter("ngram", tf), eog_ids=(),
                                        on_prompt=lambda *a: seen["ngram"].append(a))
    assert with_progress.ids == plain.ids == fast.ids
    assert seen["greedy"] == seen["ngram"] == [(64, 150), (128, 150), (150, 150)]
    with pytest.raises(refspec.UsageError, match="on_prompt must be callable"):
        refspec.generate(tf, prompt, 3, on_prompt=5)
    from refspec import cli

    monkeypatch.setattr(cli.PromptProgress, "SECONDS", 0.0)  # every chunk but the last gets its line
    progress = cli.PromptProgress()
    for done in (64, 128, 150):
        progress(done, 150)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" tokens (")[0] for line in lines] == ["refspec: prompt: 64 of 150", "refspec: prompt: 128 of 150"]
