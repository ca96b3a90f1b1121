"""qwen35 (Gated DeltaNet + gated attention, with an MTP block) end to end on tiny synthetic models: the
loader reads and checks every hyper-parameter, the forward pass keeps the recurrent state per position and
stays batch invariant, and the MTP drafter's incremental guesses equal a from-scratch computation."""
import numpy as np
import pytest
from gguf import GGUFValueType
from gguf.gguf_writer import GGUFValue
from hypothesis import given
from hypothesis import strategies as st

from refspec import synthetic
from refspec.backends import CpuBackend
from refspec.cli import main
from refspec.errors import DeviceError, ModelFileError, RefspecError, UnsupportedModelError, UsageError
from refspec.forward import Transformer
from refspec.generate import generate
from refspec.gguf_model import load
from refspec.speculative import MtpDrafter, make_drafter, speculative_generate

from bits import assert_bits_equal
from test_gguf_model import assert_weights_match_file

SHAPE = dict(arch="qwen35", n_layer=4, n_embd=64, n_ff=96, n_head=2, n_head_kv=1, head_dim=32, n_ctx=64,
             ssm_d_state=16, ssm_n_k_heads=2, ssm_n_v_heads=4, full_attention_interval=2, n_nextn=1)


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return synthetic.write_model(tmp_path_factory.mktemp("q35") / "q35.gguf", seed=11, **SHAPE)


@pytest.fixture(scope="module")
def tf(path):
    return Transformer(load(path), CpuBackend())


# --------------------------------------------------------------------------------------------- loading
def test_config_and_weights_come_from_the_file(path):
    model = load(path)
    c = model.config
    assert (c.n_layer, c.n_nextn, c.n_block, c.recurrent) == (4, 1, 5, (True, False, True, False, False))
    assert (c.head_dim, c.n_rot, c.n_q_proj, c.rope_neox, c.has_attn_gate) == (32, 8, 128, True, True)
    assert (c.ssm_d_conv, c.ssm_d_state, c.ssm_n_k_heads, c.ssm_n_v_heads) == (4, 16, 2, 4)
    assert (c.ssm_conv_dim, c.ssm_value_dim) == (2 * 32 + 64, 64)
    w = model.weights
    assert w.layers[0].wq is None and w.layers[0].ssm_conv1d.shape == (128, 4) and w.layers[0].w_beta.shape == (4, 64)
    assert w.layers[1].w_qkv is None and w.layers[1].wq.shape == (128, 64) and w.layers[1].q_norm.shape == (32,)
    assert (w.layers[0].ssm_a < 0).all()
    m = w.mtp
    assert m.eh_proj.shape == (64, 128) and m.embed is w.tok_embd and m.head is w.output
    assert m.head_norm is not w.output_norm  # the file's shared_head_norm
    assert_weights_match_file(model, path)  # every trunk tensor bit for bit


@pytest.mark.parametrize("item_type", [GGUFValueType.BOOL, GGUFValueType.UINT8])  # the converter writes BOOL
def test_explicit_recurrent_layer_list_wins(tmp_path, path, item_type):
    same = GGUFValue([True, False, True, False, False], GGUFValueType.ARRAY, item_type)
    ok = synthetic.rewrite_gguf(path, tmp_path / "same.gguf", metadata={"qwen35.attention.recurrent_layers": same})
    assert load(ok).config.recurrent == (True, False, True, False, False)
    flags = GGUFValue([True, True, False, True, False], GGUFValueType.ARRAY, item_type)
    changed = synthetic.rewrite_gguf(path, tmp_path / "list.gguf", metadata={"qwen35.attention.recurrent_layers": flags})
    with pytest.raises(RefspecError, match="blk.1.attn_q.weight is not part|blk.1.attn_qkv.weight is missing"):
        load(changed)  # layer 1 is attention in the file: the flags and the tensors disagree


def i32(v):
    return GGUFValue(v, GGUFValueType.INT32)


BAD = {
    "two nextn blocks": (dict(metadata={"qwen35.nextn_predict_layers": 2}), UnsupportedModelError, "nextn"),
    "nextn count absurd": (dict(metadata={"qwen35.nextn_predict_layers": 5}), ModelFileError, "nextn_predict_layers"),
    "inner size": (dict(metadata={"qwen35.ssm.inner_size": 96}), UnsupportedModelError, "inner_size"),
    "state size zero": (dict(metadata={"qwen35.ssm.state_size": 0}), ModelFileError, "state_size"),
    "value heads not a multiple": (dict(metadata={"qwen35.ssm.time_step_rank": 3, "qwen35.ssm.inner_size": 48}),
                                   ModelFileError, "multiple"),
    "conv kernel missing": (dict(drop=["qwen35.ssm.conv_kernel"]), ModelFileError, "missing"),
    "sections missing": (dict(drop=["qwen35.rope.dimension_sections"]), ModelFileError, "dimension_sections"),
    "sections reach the extra one": (dict(metadata={"qwen35.rope.dimension_sections": [1, 0, 0, 3]}),
                                     UnsupportedModelError, "extra section"),
    "sections all zero": (dict(metadata={"qwen35.rope.dimension_sections": [0, 0, 0, 0]}), ModelFileError,
                          "all zero"),
    "interval zero": (dict(metadata={"qwen35.full_attention_interval": 0}), ModelFileError, "interval"),
    "recurrent nextn": (dict(metadata={"qwen35.attention.recurrent_layers":
                                       GGUFValue([1, 0, 1, 0, 1], GGUFValueType.ARRAY, GGUFValueType.UINT8)}),
                        ModelFileError, "nextn block recurrent"),
    "recurrent list short": (dict(metadata={"qwen35.attention.recurrent_layers":
                                            GGUFValue([1, 0], GGUFValueType.ARRAY, GGUFValueType.UINT8)}),
                             ModelFileError, "has 2 items, expected 5"),
    "positive ssm_a": (dict(drop=["blk.0.ssm_a"], add_tensors={"blk.0.ssm_a": np.ones(4, np.float32)}),
                       ModelFileError, "ssm_a"),
    "conv1d of the wrong shape": (dict(drop=["blk.2.ssm_conv1d.weight"],
                                       add_tensors={"blk.2.ssm_conv1d.weight": np.ones((128, 3), np.float32)}),
                                  ModelFileError, "ssm_conv1d.weight has shape"),
    "eh_proj missing": (dict(drop=["blk.4.nextn.eh_proj.weight"]), ModelFileError, "eh_proj.weight is missing"),
    "ffn_norm instead of post_attention_norm": (
        dict(drop=["blk.1.post_attention_norm.weight"], add_tensors={"blk.1.ffn_norm.weight": np.ones(64, np.float32)}),
        UnsupportedModelError, "blk.1.ffn_norm.weight"),
    "nextn tensor in a trunk layer": (dict(add_tensors={"blk.0.nextn.enorm.weight": np.ones(64, np.float32)}),
                                      UnsupportedModelError, "blk.0.nextn.enorm"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_qwen35_files_are_refused(tmp_path, path, case):
    changes, error_type, fragment = BAD[case]
    bad = synthetic.rewrite_gguf(path, tmp_path / "bad.gguf", **changes)
    with pytest.raises(error_type, match=fragment) as info:
        load(bad, log=lambda message: None)
    assert "\n" not in str(info.value)


def test_synthetic_command_line_and_preset():
    preset = synthetic.PRESETS["qwen3.5-27b"]
    assert (preset["n_layer"], preset["n_embd"], preset["n_ff"], preset["n_head"], preset["n_head_kv"],
            preset["head_dim"], preset["n_rot"], preset["n_vocab"], preset["rope_base"]) == (
        64, 5120, 17408, 24, 4, 256, 64, 248320, 1e7)
    assert (preset["ssm_n_k_heads"], preset["ssm_n_v_heads"], preset["ssm_d_state"], preset["n_nextn"]) == (16, 48, 128, 1)


def test_synthetic_cli_writes_qwen35_with_and_without_mtp(tmp_path, capsys):
    for n_nextn in (0, 1):
        out = tmp_path / f"m{n_nextn}.gguf"
        assert main(["synthetic", str(out), "--arch", "qwen35", "--n-layer", "3", "--n-nextn", str(n_nextn)]) == 0
        c = load(out).config
        assert (c.arch, c.n_layer, c.n_nextn, c.recurrent[:3]) == ("qwen35", 3, n_nextn, (True, True, False))


# ------------------------------------------------------------------------------------------ the forward pass
def test_recurrent_state_is_kept_per_row_and_resumable(tf):
    """A pass of R rows leaves the state after each row in its slot; passes resuming after any of them give
    the bits of single steps, and a state no longer held is an error, not a silent recomputation."""
    ids = [5, 9, 100, 7, 33, 8, 250, 11, 40, 77]
    single = tf.new_cache(32)
    want = [tf.forward(single, [t], p)[0] for p, t in enumerate(ids)]
    for n_right in range(1, 6):  # a verify pass of 5 rows whose first n_right tokens are the right ones
        cache = tf.new_cache(32, n_states=5)
        tf.forward(cache, ids[:4], 0)
        tf.forward(cache, ids[4 : 4 + n_right] + [1, 2, 3, 4][: 5 - n_right], 4)
        resume = 4 + n_right  # resumes after the last right row, from the state that row left
        got = tf.forward(cache, ids[resume:], resume)
        for j, row in enumerate(got):
            assert_bits_equal(row, want[resume + j], f"resume at {resume}, position {resume + j}")
    cache = tf.new_cache(32, n_states=2)
    tf.forward(cache, ids[:6], 0)
    with pytest.raises(UsageError, match="no longer held"):
        tf.forward(cache, ids[3:], 3)  # the state after position 2 was overwritten
    with pytest.raises(UsageError, match="no longer held"):
        tf.forward(tf.new_cache(32), ids[3:], 3)  # positions 0..2 never ran


def test_a_backend_without_the_deltanet_ops_is_refused(path):
    backend = type("NoDeltaNet", (), {"name": "nodelta", "upload_weights": lambda self, w: w})()
    with pytest.raises(DeviceError, match="DeltaNet"):
        Transformer(load(path), backend)


# --------------------------------------------------------------------------------------------- the MTP block
def mtp_reference(tf, context: list[int], k: int) -> list[int]:
    """The MTP drafter's guesses computed from scratch: the model over the whole context for its hidden rows,
    the MTP block over every position in one fresh pass, then k-1 recursive steps."""
    cache = tf.new_cache(len(context) + k)
    _, hidden = tf.forward(cache, context[:-1], 0, hidden=True) if len(context) > 1 else (None, None)
    rows = [np.zeros(tf.config.n_embd, np.float32)] + ([hidden[r] for r in range(len(context) - 1)] if hidden is not None else [])
    logits, h = tf.forward(cache, context, 0, mtp_from=np.stack(rows))
    drafts = []
    for i in range(k):
        drafts.append(int(np.argmax(logits[0])))
        if i + 1 < k:
            logits, h = tf.forward(cache, drafts[-1:], len(context) + i, mtp_from=h)
    return drafts


class Recording(MtpDrafter):
    def __init__(self, tf):
        super().__init__(tf)
        self.calls = []

    def propose(self, context, k):
        drafts = super().propose(context, k)
        self.calls.append((list(context), k, drafts))
        return drafts


@given(prompt=st.lists(st.integers(0, 282), min_size=1, max_size=12), n_predict=st.integers(1, 16),
       draft_max=st.integers(1, 5))
def test_mtp_drafts_equal_a_from_scratch_computation_and_decoding_equals_greedy(tf, prompt, n_predict, draft_max):
    greedy = generate(tf, prompt, n_predict, keep_logits=True)
    drafter = Recording(tf)
    spec = speculative_generate(tf, prompt, n_predict, drafter=drafter, draft_max=draft_max, keep_logits=True)
    assert spec.ids == greedy.ids
    for a, b in zip(spec.logits, greedy.logits):
        assert_bits_equal(a, b, "logits")
    for context, k, drafts in drafter.calls[:3]:
        assert drafts == mtp_reference(tf, context, k)


def test_mtp_block_rows_are_batch_invariant(tf):
    """The catch-up pass over many positions equals the block run one position at a time."""
    ids = [3, 30, 60, 90, 120, 150]
    h = np.random.default_rng(0).standard_normal((len(ids), 64)).astype(np.float32)
    many, h_many = tf.forward(tf.new_cache(16), ids, 0, mtp_from=h)
    cache = tf.new_cache(16)
    for p in range(len(ids)):
        one, h_one = tf.forward(cache, ids[p : p + 1], p, mtp_from=h[p : p + 1])
    assert_bits_equal(one, many, "MTP logits of the last row")
    assert_bits_equal(h_one, h_many, "MTP hidden row")


def test_mtp_needs_a_nextn_block(tmp_path, capsys):
    plain = synthetic.write_model(tmp_path / "plain.gguf", arch="qwen35", n_layer=2)
    with pytest.raises(UsageError, match="no MTP"):
        make_drafter("mtp", Transformer(load(plain), CpuBackend()))
    llama = synthetic.write_model(tmp_path / "llama.gguf", arch="llama", n_layer=1)
    assert main(["generate", "-m", str(llama), "-p", "hi", "-n", "3", "--device", "cpu", "--draft", "mtp"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("refspec: error: ") and "MTP" in err[-1]


def test_mtp_cli_reports_drafter_statistics(path, capsys):
    assert main(["generate", "-m", str(path), "-p", "abcabc", "-n", "12", "--device", "cpu", "--draft", "mtp",
                 "--json"]) == 0
    import json

    stats = json.loads(capsys.readouterr().out)["stats"]
    assert stats["drafter"] == "mtp" and stats["n_drafted"] > 0 and sum(stats["accepted_histogram"]) == stats["n_passes"]


def test_mtp_from_must_be_one_hidden_row_per_id(tf):
    """A pass of the MTP block takes the hidden rows [R, E] of the positions before its R ids; anything else
    is a UsageError before anything runs (a captured pass would read past a short array)."""
    cache = tf.new_cache(16)
    for bad in (np.zeros((2, 64), np.float32), np.zeros((3, 63), np.float32), [0.0] * 64):
        with pytest.raises(UsageError, match="mtp_from"):
            tf.forward(cache, [1, 2, 3], 0, mtp_from=bad)
    logits, h = tf.forward(cache, [1, 2, 3], 0, mtp_from=np.zeros((3, 64), np.float32))
    assert logits.shape == (1, tf.config.n_vocab) and h.shape == (1, 64)


def test_state_checks_follow_the_layers_a_pass_runs(tf):
    """A pass over a subset of the layers (a layer-skip drafter's) checks and records only the DeltaNet
    layers it runs; the MTP block runs none."""
    assert tf.recurrent_layers() == [0, 2] and tf.recurrent_layers([1, 2, 3]) == [2]
    assert tf.recurrent_layers(mtp=True) == []
    cache = tf.new_cache(16, n_states=2)
    tf.forward(cache, [4, 5, 6], 0, layers=[2, 3])  # layer 0's ring holds nothing
    tf.forward(cache, [7], 3, layers=[1, 2])  # layer 2 continues after position 2
    with pytest.raises(UsageError, match="layer 0: the recurrent state after position 3"):
        tf.forward(cache, [8], 4)
