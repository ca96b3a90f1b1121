"""What a llama.cpp user's habits get on refspec's command line: prompts from files and stdin, token ids,
llama.cpp flags answered in one line, hidden control tokens, stop reasons, detokenize, info from the header,
and a multi-turn chat. Run as a user would (a subprocess), on a tiny synthetic model."""
import json
import subprocess
import sys

import pytest

from refspec import llama_flags
from refspec.synthetic import rewrite_gguf, write_model


def refspec(*args, stdin=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "refspec.cli", *args], capture_output=True, text=True,
                          input=stdin, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("refspec: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in last, last


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(write_model(tmp_path_factory.mktemp("habits") / "tiny.gguf", arch="qwen2", n_ctx=96, seed=3))


def generate_json(model, *args, stdin=None):
    return json.loads(refspec("generate", "-m", model, "-n", "6", "--json", "--device", "cpu", *args,
                              stdin=stdin).stdout)


# --- prompts -------------------------------------------------------------------------------------------
def test_prompt_from_file_stdin_and_argument_agree(model, tmp_path):
    """-f FILE is the file's text without its last newline, as llama.cpp reads it (-sysf too); -p - is
    standard input as it is."""
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("hello world\n", encoding="utf-8")
    from_arg = generate_json(model, "-p", "hello world")
    assert generate_json(model, "-p", "hello world\n")["prompt_ids"] != from_arg["prompt_ids"]
    for other in (generate_json(model, "-f", str(prompt)), generate_json(model, "-p", "-", stdin="hello world")):
        assert (other["prompt_ids"], other["ids"]) == (from_arg["prompt_ids"], from_arg["ids"])
    prompt.write_text("hello world\n\n", encoding="utf-8")  # one newline goes, not two
    assert generate_json(model, "-f", str(prompt))["prompt_ids"] == generate_json(model, "-p", "hello world\n")["prompt_ids"]
    system = tmp_path / "system.txt"
    system.write_text("be brief\n", encoding="utf-8")
    assert generate_json(model, "--chat", "-p", "x", "-sysf", str(system))["prompt_ids"] == \
        generate_json(model, "--chat", "-p", "x", "-sys", "be brief")["prompt_ids"]


def test_ids_are_the_prompt_as_given(model):
    text = generate_json(model, "-p", "abc")
    ids = generate_json(model, "--ids", ",".join(map(str, text["prompt_ids"])))
    assert ids["prompt_ids"] == text["prompt_ids"] and ids["ids"] == text["ids"]
    spaced = generate_json(model, "--ids", " ".join(map(str, text["prompt_ids"])))
    assert spaced["ids"] == text["ids"]


@pytest.mark.parametrize("args, fragments", [
    (["-f", "/nonexistent/prompt.txt"], ["cannot read the prompt file", "No such file"]),
    (["--ids", "1,x,3"], ["'x' is not an integer"]),
    (["--ids", "1,100000"], ["100000 is outside the vocabulary"]),
    (["--ids", " , "], ["no token ids"]),
    (["--ids", "1,2", "--chat"], ["--chat needs a text prompt"]),
    (["-p", "hi", "-sys", "be brief"], ["needs --chat"]),
    ([], ["give a prompt"]),
    (["-p", "hi", "-n", "-2"], ["-n must be"]),
])
def test_bad_prompts_give_one_line_errors(model, args, fragments):
    assert_one_line_error(refspec("generate", "-m", model, *args, check=False), *fragments)


def test_binary_prompt_file_and_stdin_are_refused(model, tmp_path):
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"ab\xff\xfecd")
    assert_one_line_error(refspec("generate", "-m", model, "-f", str(binary), check=False), "not UTF-8")
    proc = subprocess.run([sys.executable, "-m", "refspec.cli", "generate", "-m", model, "-p", "-"],
                          input=b"\xff\xfe", capture_output=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.decode().strip().endswith("is not UTF-8 text (byte 0)")


# --- llama.cpp flags ------------------------------------------------------------------------------------
HARMLESS = [["-ngl", "99"], ["-tb", "8"], ["-b", "512"], ["-ub", "128"], ["-s", "42"],
            ["--temp", "0"], ["--top-k", "40"], ["--top-p", "0.9"], ["--min-p", "0.05"], ["--repeat-penalty", "1.0"],
            ["--mlock"], ["-no-cnv"], ["-fa"], ["-co"], ["-ctk", "f32"], ["--keep", "4"], ["-nkvo"], ["--jinja"],
            ["-st"], ["--no-display-prompt"], ["-dev", "none"], ["-v"], ["--no-warmup"], ["--log-disable"]]


def test_harmless_llama_flags_note_and_run(model):
    plain = generate_json(model, "-p", "hi")
    flags = [part for flag in HARMLESS for part in flag]
    proc = refspec("generate", "-m", model, "-p", "hi", "-n", "6", "--json", "--device", "cpu", *flags)
    assert json.loads(proc.stdout)["ids"] == plain["ids"]
    notes = [line for line in proc.stderr.splitlines() if " ignored: " in line]
    assert [note.split()[2] for note in notes] == [flag[0] for flag in HARMLESS] or \
        sorted(note.split()[2] for note in notes) == sorted(flag[0] for flag in HARMLESS)
    assert all(note.startswith("refspec: note: ") for note in notes)


def test_temperature_below_zero_is_greedy_as_in_llama_cpp(model):
    plain = generate_json(model, "-p", "hi")
    proc = refspec("generate", "-m", model, "-p", "hi", "-n", "6", "--json", "--device", "cpu", "--temperature", "-1")
    assert json.loads(proc.stdout)["ids"] == plain["ids"]
    assert "refspec: note: --temp -1.0 ignored" in proc.stderr, proc.stderr


@pytest.mark.parametrize("threads", ["1", "-1", "2", "--threads=1"])
def test_threads_are_honoured_on_the_cpu_with_the_same_ids(model, threads):
    plain = generate_json(model, "-p", "hi")
    flag = [threads] if threads.startswith("--") else ["-t", threads]
    proc = refspec("generate", "-m", model, "-p", "hi", "-n", "6", "--json", "--device", "cpu", *flag)
    assert json.loads(proc.stdout)["ids"] == plain["ids"]
    assert "ignored" not in proc.stderr, proc.stderr
    from refspec.cpu_gemv import max_threads

    expected = max_threads() if threads == "-1" else min(int(threads[-1]), max_threads())
    assert f"device cpu, {expected} thread" in proc.stderr, proc.stderr


def test_threads_beyond_numba_are_noted_and_bad_counts_refused(model):
    from refspec.cpu_gemv import max_threads

    many = str(max_threads() + 1)
    proc = refspec("generate", "-m", model, "-p", "hi", "-n", "2", "--device", "cpu", "-t", many)
    assert f"refspec: note: -t {many}: numba runs at most {max_threads()} threads here" in proc.stderr
    for bad in ("0", "-2", "x"):
        proc = refspec("generate", "-m", model, "-p", "hi", "-t", bad, check=False)
        assert proc.returncode != 0 and "-t" in proc.stderr.splitlines()[-1] and "Traceback" not in proc.stderr


def test_long_spellings_and_values_are_named_in_the_note(model):
    proc = refspec("generate", "-m", model, "-p", "hi", "-n", "2", "--n-gpu-layers", "0", "-fa", "off", "--seed", "7")
    assert "refspec: note: -ngl 0 ignored" in proc.stderr and "refspec: note: -fa off ignored" in proc.stderr
    assert "refspec: note: -s 7 ignored" in proc.stderr


@pytest.mark.parametrize("flag, fragment", [
    (["--temp", "0.8"], "greedily by design"),
    (["--temperature", "1"], "greedily by design"),
    (["--temp", "nan"], "greedily by design"),
    (["--repeat-penalty", "1.1"], "no repetition penalty"),
    (["--presence-penalty", "0.5"], "no presence penalty"),
    (["--mirostat", "2"], "greedily"),
    (["-md", "draft.gguf"], "drafts from the model itself"),
    (["--model-draft", "draft.gguf"], "--draft ngram"),
    (["--grammar", "root ::= x"], "no constrained decoding"),
    (["-hf", "org/model"], "-m FILE"),
    (["--lora", "a.gguf"], "no adapters"),
    (["-i"], "--chat"),
    (["-ctk", "q8_0"], "binary32"),
    (["--cache-type-v", "f16"], "binary32"),
    (["--rope-freq-base", "1e6"], "RoPE from the model file"),
    (["--yarn-orig-ctx", "4096"], "RoPE from the model file"),
    (["-r", "User:"], "no stop strings"),
    (["--chat-template", "chatml"], "own chat template"),
    (["--context-shift"], "never shifts the context"),
    (["--override-kv", "a=int:1"], "as it is"),
], ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_llama_flags_that_would_change_the_output_are_errors(model, flag, fragment):
    canonical = next(f.names[0] for f in llama_flags.FLAGS if flag[0] in f.names)  # the name messages use
    assert_one_line_error(refspec("generate", "-m", model, "-p", "hi", *flag, check=False), canonical, fragment)


@pytest.mark.parametrize("word", ["-xyz", "-no-display-prompt", "-ctx", "-nkv"])
def test_unknown_single_dash_words_are_named_not_read_as_glued_values(model, word):
    """argparse reads -ctx as -c with the value 'tx' and said "-c: invalid int value: 'tx'"."""
    assert_one_line_error(refspec("generate", "-m", model, "-p", "hi", word, check=False), f"unknown option {word}")


def test_llama_cpp_spellings_of_refspec_options(model):
    assert len(generate_json(model, "-p", "hi", "--predict", "3", "--ignore-eos")["ids"]) == 3
    special = refspec("generate", "-m", model, "-p", "hi", "-n", "4", "-sp").stdout
    assert special == refspec("generate", "-m", model, "-p", "hi", "-n", "4", "--special").stdout
    assert_one_line_error(refspec("generate", "-m", model, "-p", "hi", "--frobnicate", check=False),
                          "unrecognized arguments: --frobnicate (see 'refspec generate --help')")


def test_ctx_size_is_the_context_of_the_run(model):
    """-c N: generation stops when prompt and tokens fill N positions (stop reason context), with the ids the
    unbounded run makes up to there; 0 is the model's context (96 here); past it, a note and the model's."""
    whole = generate_json(model, "-p", "hello world", "--ignore-eos")  # -n 6
    n_prompt = len(whole["prompt_ids"])
    cut = generate_json(model, "-p", "hello world", "--ignore-eos", "-c", str(n_prompt + 3))
    assert cut["ids"] == whole["ids"][:3] and cut["stop_reason"] == "context"
    until = json.loads(refspec("generate", "-m", model, "-p", "hello world", "-n", "-1", "--ignore-eos", "--json",
                               "-c", str(n_prompt + 4)).stdout)
    assert until["ids"] == whole["ids"][:4] and until["stop_reason"] == "context"
    exact = generate_json(model, "-p", "hello world", "--ignore-eos", "-c", str(n_prompt + 6))  # room for -n 6
    assert (exact["ids"], exact["stop_reason"]) == (whole["ids"], "max_tokens")
    assert generate_json(model, "-p", "hello world", "--ignore-eos", "-c", "0")["ids"] == whole["ids"]
    past = refspec("generate", "-m", model, "-p", "hello world", "-n", "2", "-c", "5000")
    assert "-c 5000: the model's context is 96 positions" in past.stderr
    assert_one_line_error(refspec("generate", "-m", model, "-p", "hello world", "-c", str(n_prompt), check=False),
                          f"the prompt has {n_prompt} tokens; the context of -c {n_prompt} holds {n_prompt}")
    assert_one_line_error(refspec("generate", "-m", model, "-p", "x", "-c", "-1", check=False), "-c takes")


def test_escapes_only_with_e_as_llama_cpp_processes_them(model):
    literal = "a\\nb\\x41\\q\\"  # a, backslash, n, b, backslash, x41, backslash, q, backslash
    as_written = generate_json(model, "-p", literal)["prompt_ids"]
    escaped = generate_json(model, "-p", literal, "-e")["prompt_ids"]
    assert escaped == generate_json(model, "-p", "a\nbA\\q\\")["prompt_ids"] != as_written
    assert as_written == generate_json(model, "-p", literal, "--no-escape")["prompt_ids"]
    with_system = generate_json(model, "--chat", "-p", "x", "-sys", "be\\tbrief", "-e")["prompt_ids"]
    assert with_system == generate_json(model, "--chat", "-p", "x", "-sys", "be\tbrief")["prompt_ids"]
    assert_one_line_error(refspec("generate", "-m", model, "-p", "a\\xff", "-e", check=False), "-e", "not UTF-8")


def test_verbose_prompt_lists_the_prompt_tokens(model):
    proc = refspec("generate", "-m", model, "-p", "hello world", "-n", "2", "--verbose-prompt", "--json")
    ids = json.loads(proc.stdout)["prompt_ids"]
    lines = [line for line in proc.stderr.splitlines() if " -> " in line]
    assert f"refspec: prompt: {len(ids)} tokens" in proc.stderr
    assert [int(line.split()[1]) for line in lines] == ids


def test_numeric_draft_points_to_draft_max(model):
    proc = refspec("generate", "-m", model, "-p", "hi", "--draft", "8", check=False)
    assert proc.returncode != 0 and "--draft-max 8" in proc.stderr and "Traceback" not in proc.stderr


def test_help_lists_every_llama_flag_with_its_answer():
    text = refspec("generate", "--help").stdout
    for flag in llama_flags.FLAGS:
        assert flag.names[0] in text
    for option in ("-f FILE", "--ids IDS", "-sys", "--special", "--ignore-eos", "stop_reason", "-cnv"):
        assert option in text
    assert "note:" in text and "error:" in text


def test_cnv_is_chat(model):
    assert generate_json(model, "-p", "hi", "-cnv")["ids"] == generate_json(model, "-p", "hi", "--chat")["ids"]


# --- output ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eog_model(model, tmp_path_factory):
    """The tiny model with the first token it generates after "hi" made its end-of-turn token: EOS and a
    control token, as <|im_end|> is in a real chat model."""
    from gguf import GGUFReader

    first = generate_json(model, "-p", "hi", "--ignore-eos")["ids"][0]
    types = GGUFReader(model).fields["tokenizer.ggml.token_type"].contents()
    types[first] = 3  # CONTROL
    path = tmp_path_factory.mktemp("eog") / "eog.gguf"
    rewrite_gguf(model, path, metadata={"tokenizer.ggml.eos_token_id": first, "tokenizer.ggml.token_type": types})
    return str(path), first


def test_stop_reason_and_ignore_eos(eog_model):
    path, first = eog_model
    stopped = generate_json(path, "-p", "hi")
    assert stopped["ids"] == [first] and stopped["stop_reason"] == "eog" and stopped["text"] == ""
    full = generate_json(path, "-p", "hi", "--ignore-eos")
    assert full["ids"][0] == first and len(full["ids"]) == 6 and full["stop_reason"] == "max_tokens"


def test_end_of_turn_is_printed_only_with_special(eog_model):
    path, first = eog_model
    token_text = refspec("detokenize", "-m", path, str(first)).stdout
    assert token_text.strip()  # the control token has a visible text
    assert refspec("generate", "-m", path, "-p", "hi", "-n", "4").stdout == "\n"
    assert refspec("generate", "-m", path, "-p", "hi", "-n", "4", "--special").stdout == token_text
    assert generate_json(path, "-p", "hi", "--special")["text"] + "\n" == token_text
    assert refspec("detokenize", "-m", path, str(first), "--no-special").stdout == "\n"


# --- detokenize -----------------------------------------------------------------------------------------
def test_tokenize_detokenize_round_trip_through_stdin(model):
    text = "<|im_start|>hello world"
    tokens = refspec("tokenize", "-m", model, text, "--json").stdout
    assert refspec("detokenize", "-m", model, "-", stdin=tokens).stdout == text + "\n"
    ids = json.loads(tokens)["ids"]
    as_json = json.loads(refspec("detokenize", "-m", model, ",".join(map(str, ids)), "--json").stdout)
    assert as_json == {"text": text}


def test_tokenize_reads_text_as_llama_tokenize_does(model, tmp_path):
    text = "<|im_start|>hello world\nagain\n"  # (a file is tokenized whole, its last newline too)
    expected = json.loads(refspec("tokenize", "-m", model, text, "--json").stdout)["ids"]
    source = tmp_path / "text.txt"
    source.write_text(text, encoding="utf-8")
    for args, stdin in ((["-p", text], None), (["-f", str(source)], None), (["-"], text), (["--stdin"], text)):
        out = refspec("tokenize", "-m", model, *args, "--ids", "--show-count", stdin=stdin).stdout.splitlines()
        assert out == [str(expected), f"Total number of tokens: {len(expected)}"], args
    plain = json.loads(refspec("tokenize", "-m", model, "-p", text, "--no-parse-special", "--json").stdout)["ids"]
    assert expected[0] == 1 and 1 not in plain and len(plain) > len(expected)  # the control token's text as text
    assert json.loads(refspec("tokenize", "-m", model, "-p", text, "--no-bos", "--json").stdout)["ids"] == expected


def test_tokenize_adds_bos_only_when_asked_and_the_model_wants_it(model, tmp_path):
    wants = tmp_path / "bos.gguf"
    rewrite_gguf(model, wants, metadata={"tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.bos_token_id": 5})
    plain = json.loads(refspec("tokenize", "-m", str(wants), "hi", "--json").stdout)["ids"]
    with_bos = json.loads(refspec("tokenize", "-m", str(wants), "hi", "--json", "--add-bos").stdout)["ids"]
    assert with_bos == [5] + plain and 5 not in plain
    assert json.loads(refspec("tokenize", "-m", model, "hi", "--json", "--add-bos").stdout)["ids"] == \
        json.loads(refspec("tokenize", "-m", model, "hi", "--json").stdout)["ids"]  # the model adds none


@pytest.mark.parametrize("args, stdin, fragment", [
    ([], None, "give the text once"),
    (["a", "-p", "b"], None, "(got TEXT, -p)"),
    (["-f", "/nonexistent/t.txt"], None, "cannot read"),
    (["-"], b"\xff", "not UTF-8"),
])
def test_bad_tokenize_input_gives_one_line_errors(model, args, stdin, fragment):
    if isinstance(stdin, bytes):
        proc = subprocess.run([sys.executable, "-m", "refspec.cli", "tokenize", "-m", model, *args], input=stdin,
                              capture_output=True, timeout=300)
        proc = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    else:
        proc = refspec("tokenize", "-m", model, *args, stdin=stdin, check=False)
    assert_one_line_error(proc, fragment)


@pytest.mark.parametrize("args, stdin, fragment", [
    (["1", "x"], None, "'x' is not an integer"),
    (["-5"], None, "outside the vocabulary"),
    (["99999"], None, "outside the vocabulary"),
    (["-"], '{"tokens": [1]}', "not a JSON object with \"ids\""),
    (["-"], '{"ids": 3}', "is not a list"),
    (["-"], "", "no token ids"),
])
def test_bad_detokenize_input_gives_one_line_errors(model, args, stdin, fragment):
    assert_one_line_error(refspec("detokenize", "-m", model, *args, stdin=stdin, check=False), fragment)


# --- info -----------------------------------------------------------------------------------------------
def test_info_reads_the_header_only(model, tmp_path):
    info = json.loads(refspec("info", "-m", model, "--json").stdout)
    assert info["tensor_types"] == {"Q8_0": 15, "F32": 11}
    assert info["refspec_would"].startswith("load as is")
    assert (info["bos_id"], info["eos_id"], info["pre"], info["tokenizer"]) == (1, 2, "smollm", "gpt2")
    assert 2 in info["eog_ids"] and info["chat_template"] is True
    text = refspec("info", "-m", model).stdout
    assert "'<|im_end|>'" in text and "refspec_would" in text


def test_info_says_convert_or_refuse_and_why(model, tmp_path):
    q4 = tmp_path / "q4.gguf"
    rewrite_gguf(model, q4, tensor_types={"blk.0.ffn_up.weight": "Q4_1", "blk.1.ffn_up.weight": "Q4_1"})
    assert json.loads(refspec("info", "-m", str(q4), "--json").stdout)["refspec_would"] == \
        "convert 2 matrices (Q4_1) to Q8_0 at load"
    unknown = tmp_path / "arch.gguf"
    rewrite_gguf(model, unknown, metadata={"general.architecture": "mamba"})
    info = json.loads(refspec("info", "-m", str(unknown), "--json").stdout)
    assert info["refspec_would"] == "refuse" and "architecture 'mamba'" in info["refuse_reason"]
    extra = tmp_path / "extra.gguf"
    import numpy as np

    rewrite_gguf(model, extra, add_tensors={"blk.0.mystery.weight": np.zeros(32, np.float32)})
    info = json.loads(refspec("info", "-m", str(extra), "--json").stdout)
    assert info["refspec_would"] == "refuse" and "blk.0.mystery.weight" in info["refuse_reason"]


def test_info_template(model, tmp_path):
    assert "<|im_start|>" in refspec("info", "-m", model, "--template").stdout
    bare = tmp_path / "bare.gguf"
    rewrite_gguf(model, bare, drop={"tokenizer.chat_template"})
    proc = refspec("info", "-m", str(bare), "--template")
    assert "ChatML" in proc.stderr and "<|im_start|>" in proc.stdout


def test_info_on_a_file_that_is_not_gguf(tmp_path):
    junk = tmp_path / "junk.txt"
    junk.write_text("hello")
    assert_one_line_error(refspec("info", "-m", str(junk), check=False), "not a GGUF file")
    assert "convert_hf_to_gguf" not in refspec("info", "-m", str(junk), check=False).stderr


def test_a_hugging_face_model_gets_told_how_to_convert_it(tmp_path):
    hf = tmp_path / "Qwen2.5-0.5B"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    weights = hf / "model.safetensors"
    weights.write_bytes((2).to_bytes(8, "little") + b"{}")
    for path, what in ((hf, "is a directory (a Hugging Face model?)"), (weights, "not a GGUF file")):
        assert_one_line_error(refspec("generate", "-m", str(path), "-p", "hi", "--device", "cpu", check=False),
                              what, "convert_hf_to_gguf.py --outtype q8_0")


# --- chat -----------------------------------------------------------------------------------------------
def test_chat_conversation_one_json_object_per_turn(model):
    proc = refspec("generate", "-m", model, "--chat", "-sys", "be brief", "-n", "3", "--json", "--device", "cpu",
                   stdin="hi\n\nthere\n")
    turns = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(turns) == 2  # the empty line is skipped
    first, second = turns
    # the second turn's prompt holds the first turn's prompt, then the reply, then the new message
    assert second["prompt_ids"][:len(first["prompt_ids"])] == first["prompt_ids"]
    one_turn = generate_json(model, "--chat", "-sys", "be brief", "-p", "hi", "-n", "3")
    assert one_turn["prompt_ids"] == first["prompt_ids"] and one_turn["ids"] == first["ids"]


def test_draft_options_without_a_drafter_are_noted(model):
    plain = generate_json(model, "-p", "hi")
    proc = refspec("generate", "-m", model, "-p", "hi", "-n", "6", "--json", "--device", "cpu", "--draft-max", "4",
                   "--draft-adaptive", "on")
    assert json.loads(proc.stdout)["ids"] == plain["ids"]
    assert ("refspec: note: --draft-max 4, --draft-adaptive on ignored: no --draft given, so no tokens are "
            "drafted (plain greedy)") in proc.stderr.splitlines(), proc.stderr


def test_detokenize_refuses_ids_that_are_not_a_flat_list_of_integers(model):
    for ids in ("[[1]]", "[1, true]", '["1"]'):
        proc = refspec("detokenize", "-m", model, "-", stdin='{"ids": %s}' % ids, check=False)
        assert_one_line_error(proc, '"ids" on standard input is not a list of integers')


def test_chat_line_that_is_not_utf8_is_named(model):
    proc = subprocess.run([sys.executable, "-m", "refspec.cli", "generate", "-m", model, "--chat", "-n", "2",
                           "--device", "cpu"], input=b"hi\n\xff\n", capture_output=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr.decode()
    assert proc.stderr.decode().strip().splitlines()[-1] == \
        "refspec: error: line 2 of standard input is not UTF-8 text (byte 0)"


def test_hex_escapes_read_as_cs_strtol_reads_them():
    """llama.cpp's \\xNN takes the two characters when strtol(them, 16) consumes both (white space and a sign
    included); refspec's reading of them against the C library's own strtol, on every pair of characters that
    matter."""
    import ctypes
    import itertools

    from refspec.prompt_input import _hex_escape

    libc = ctypes.CDLL(None)
    libc.strtol.restype = ctypes.c_long
    libc.strtol.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int]
    alphabet = b"0123456789abcdefABCDEFgGxX+- \t\n\r\x0b\x0c\\"
    for a, b in itertools.product(alphabet, repeat=2):
        two = bytes([a, b])
        buf = ctypes.create_string_buffer(two)
        end = ctypes.c_char_p()
        value = libc.strtol(buf, ctypes.byref(end), 16)
        consumed = ctypes.cast(end, ctypes.c_void_p).value - ctypes.addressof(buf)
        assert _hex_escape(two) == (value & 0xFF if consumed == 2 else None), two
