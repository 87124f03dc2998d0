"""helpers.bench: the FLOPs formula against torch's FLOP counter and a hand count, the GPU peak
table, and `python -m helpers bench` on the smoke profile."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining

from helpers import bench, cli

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


SMALL = dict(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=64, max_position_embeddings=64, num_labels=3)
BATCH, SEQ = 2, 16


def counted_flops(model, batch, training):
    counter = FlopCounterMode(display=False)
    with counter:
        if training:
            model(**batch).loss.backward()
        else:
            with torch.no_grad():
                model(**batch)
    return counter.get_total_flops()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "forward"])
@pytest.mark.parametrize("task", bench.TASKS)
def test_formula_equals_torch_flop_counter(task, training, attn):
    config = BertConfig(**SMALL)
    model = bench.build_model(config, task, attn_implementation=attn)
    examples = bench.random_examples(config, task, BATCH, SEQ)
    counted = counted_flops(model, bench.collate(examples), training)
    expected = BATCH * SEQ * bench.flops_per_token(config, SEQ, head=task, training=training)
    assert counted == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("nsp", [False, True], ids=["mlm", "mlm+nsp"])
def test_formula_with_the_head_on_masked_positions_only(nsp):
    """The course's pretraining objective scores only the masked positions."""
    from helpers.pretraining import PretrainingObjective

    config = BertConfig(**SMALL)
    torch.manual_seed(0)
    model = (BertForPreTraining if nsp else BertForMaskedLM)(config)
    batch = bench.collate(bench.random_examples(config, "mlm", BATCH, SEQ))
    if nsp:
        batch["next_sentence_label"] = torch.tensor([0, 1])
    fraction = float((batch["labels"] != -100).float().mean())
    assert 0 < fraction < 1
    counted = counted_flops(PretrainingObjective(model, nsp=nsp), batch, training=True)
    expected = BATCH * SEQ * bench.flops_per_token(
        config, SEQ, head="pretraining" if nsp else "mlm", masked_fraction=fraction)
    assert counted == pytest.approx(expected, rel=1e-12)


def test_bert_base_by_hand():
    config = bench.bert_config("base")
    # 12 layers x (4 x 768 x 768 + 2 x 768 x 3072) = 12 x 7,077,888
    assert bench.encoder_matmul_parameters(config) == 84_934_656
    model = BertForMaskedLM(bench.bert_config("tiny"))  # structure check on a small model
    linear = sum(m.weight.numel() for m in model.bert.encoder.modules()
                 if isinstance(m, torch.nn.Linear))
    assert bench.encoder_matmul_parameters(model.config) == linear
    # at seq 128: 6 x (84.9M + 768^2 + 768 x 30522) + 12 x 12 x 128 x 768 = 6.62e8 per token
    n = 84_934_656 + 768 * 768 + 768 * 30522
    assert bench.flops_per_token(config, 128) == 6 * n + 12 * 12 * 128 * 768


def test_bad_arguments_of_the_formula():
    config = BertConfig(**SMALL)
    with pytest.raises(ValueError, match="head must be one of"):
        bench.flops_per_token(config, 16, head="ner")
    with pytest.raises(ValueError, match="seq_len"):
        bench.flops_per_token(config, 0)
    with pytest.raises(ValueError, match="valid sizes: tiny, mini, base"):
        bench.bert_config("huge")


@pytest.mark.parametrize("name, tflops, dtype", [
    ("NVIDIA H200", 989, "bf16"),
    ("NVIDIA H100 80GB HBM3", 989, "bf16"),
    ("NVIDIA H100 PCIe", 756, "bf16"),
    ("NVIDIA A100-SXM4-80GB", 312, "bf16"),
    ("NVIDIA A100-PCIE-40GB", 312, "bf16"),
    ("NVIDIA L4", 121, "bf16"),
    ("Tesla T4", 65, "fp16"),
    ("NVIDIA GeForce RTX 4090", 165, "bf16"),
])
def test_gpu_peaks(name, tflops, dtype):
    peak = bench.gpu_peak(name)
    assert (peak.device, peak.tflops, peak.dtype) == (name, tflops, dtype)


@pytest.mark.parametrize("name", ["NVIDIA L40S", "Tesla V100-SXM2-16GB", "NVIDIA GeForce RTX 3090"])
def test_unknown_gpus_have_no_peak(name):
    assert bench.gpu_peak(name) is None  # no guessed MFU for a GPU the table does not hold


def test_no_peak_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert bench.gpu_peak() is None


def test_throughput_arithmetic():
    peak = bench.Peak("test GPU", 100.0, "bf16")
    row = bench.throughput(2.0, steps=4, batch_size=8, seq_len=128, flops_per_token=1e9,
                           peak=peak)
    assert row["tokens"] == 4 * 8 * 128 and row["tokens_per_s"] == 4 * 8 * 128 / 2
    assert row["tflops"] == pytest.approx(4 * 8 * 128 * 1e9 / 2 / 1e12)
    assert row["mfu"] == pytest.approx(row["tflops"] / 100)
    assert bench.throughput(2.0, steps=4, batch_size=8, seq_len=128,
                            flops_per_token=1e9)["mfu"] is None


def test_bench_command_on_the_smoke_profile(capsys):
    code = cli.bench_main(["--profile", "smoke", "--steps", "2", "--warmup", "1",
                             "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    table = [line for line in out.splitlines() if line.startswith(("ours", "transformers"))]
    assert len(table) == 4  # two loops x two tasks
    column = -3 if torch.cuda.is_available() else -2  # a GPU's table ends with TFLOP/s and MFU
    for line in table:
        tokens_per_s = float(line.split()[column].replace(",", ""))
        assert tokens_per_s > 0
    if not torch.cuda.is_available():
        assert "GFLOP/s" in out and "MFU" not in out.split("loop")[1].splitlines()[0]


@pytest.mark.parametrize("argv, message", [
    (["--model-size", "huge"], "invalid choice: 'huge'"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--seq-len", "1000", "--model-size", "tiny"], "exceeds the tiny model's 128 positions"),
    (["--tasks", "mlm,ner"], "valid tasks are mlm, classification"),
    (["--profile", "laptop"], "unknown profile 'laptop'"),
])
def test_bench_command_refuses_bad_input(argv, message, capsys):
    try:
        code = cli.bench_main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_module_imports_only_torch():
    """The FLOPs formula and the peak table must not need transformers, pandas or datasets."""
    code = ("import sys, helpers.bench; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'transformers', 'pandas', 'datasets', 'accelerate', 'sklearn'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"
