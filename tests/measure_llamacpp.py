"""Measure llama.cpp (llama-cpp-python, CPU) against refspec on the default model: logits of the prompt "The capital of France is" plus 16 greedy tokens, on the Q4_1 file and on llama.cpp's Q8_0 copy, with an f16 and an f32 KV cache; also the size of an all-layers golden file. Prints JSON (tests/results/llamacpp_vs_refspec_cpu.json): python tests/measure_llamacpp.py > out.json"""
import datetime, json, os, pathlib, platform, tempfile
import numpy as np
import llama_cpp
from refspec import compare, golden, llamacpp, __version__
from refspec.default_model import default_model_path
from refspec.gguf_model import load
from refspec.tokenizer import Tokenizer
from refspec.spec import SPEC_VERSION

src = default_model_path()
q8 = llamacpp.requantize_q8_0(src, str(pathlib.Path(tempfile.mkdtemp()) / "q8_0.gguf"))
model = load(src, log=lambda m: None)
tok = Tokenizer.from_metadata(model.metadata)
prompt = tok.encode("The capital of France is")
ref = golden.dump(model, prompt, 16, layers=True, device="cpu")
size = golden.save(ref, str(pathlib.Path(tempfile.mkdtemp()) / "all_layers.safetensors"))
ids = ref.token_ids.tolist()
ref8 = golden.dump(load(q8, log=lambda m: None), ids, 0, device="cpu")
same_bits = np.array_equal(ref8.logits.view(np.uint32), ref.logits.view(np.uint32))
rows = []
for label, path, base in (("Q4_1 file (llama.cpp runs Q4_1)", src, ref), ("Q8_0 copy (same weights)", q8, ref8)):
    for kv in ("f16", "f32"):
        kw = {} if kv == "f16" else dict(type_k=0, type_v=0)
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(ids), n_batch=len(ids), n_ubatch=len(ids),
                              logits_all=True, verbose=False, n_threads=2, **kw)
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)], np.float32)
        s = compare.tensor_stats(base.logits, logits)
        lg = compare.logits_stats(base.logits, logits, np.arange(len(ids)))
        per_pos = [r["nmse"] for r in lg["per_position"]]
        rows.append({"weights": label, "kv_cache": kv, "nmse": s["nmse"], "max_abs_err": s["max_abs_err"],
                     "median_ulp": s["median_ulp"], "max_ulp": s["max_ulp"], "bitwise_equal": s["bitwise_equal"],
                     "n": s["n"], "top1_agree": lg["top1_agree"], "positions": lg["positions"],
                     "first_top1_difference": lg["first_top1_difference"], "top5_overlap_mean": lg["top5_overlap_mean"],
                     "nmse_position_min": min(per_pos), "nmse_position_max": max(per_pos)})
print(json.dumps({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (CPU only)",
                  "refspec_version": __version__, "spec_version": SPEC_VERSION,
                  "llama_cpp_python": llama_cpp.__version__, "model": os.path.basename(src),
                  "prompt": "The capital of France is", "positions": len(ids), "n_prompt": len(prompt),
                  "all_layers_dump_bytes": size, "all_layers_dump_tensors": len(ref.tensors),
                  "refspec_on_q8_0_copy_equals_refspec_on_q4_1_bitwise": bool(same_bits), "llama_cpp_vs_refspec": rows},
                 indent=1))
