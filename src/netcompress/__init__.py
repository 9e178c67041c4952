"""netcompress: turn a dataset and a big teacher network into a tiny, fast image classifier.

The flow, on any nn.Module (a registered model or your own), each verb returning a new module
and leaving its argument as it is:

    import netcompress as nc
    data = nc.ImageFolderData("path/to/data", image_size=96)       # or a torch Dataset / DataLoader
    model = nc.prune(model, nc.PruneConfig(method="l2", rate=0.5), example_input=torch.randn(1, 3, 96, 96))
    fast = nc.prune_iteratively(model, nc.PruneConfig(latency=nc.LatencyTarget(0.12, runtime="ort")), data).final
    print(nc.latency(fast, runtime="ort", batch=1, threads=1))    # median of interleaved rounds, or "too busy"
    model = nc.fit(model, data, epochs=3, teacher=teacher)          # distillation when a teacher is given
    small = nc.factorize(model, nc.LowRankConfig(energy=0.9))
    nc.save(model, "m.safetensors")                                 # records the surgery relative to the base
    same = nc.load("m.safetensors", model=MyNet())                  # re-applies it on a fresh base; no pickle
    nc.quantize(model, nc.QuantConfig(codec="kbit", bits=4, entropy=True)).save("m.ncq")
    print(nc.evaluate(nc.load("m.ncq", model=MyNet()), data, split="validation")["accuracy"])
    print(nc.deploy(model, data, "deployed", nc.DeployConfig(max_drop=1.0)).chosen)  # fastest file that holds

Layers: compress/ holds pure model -> model transforms (one pruning step, factorize, quantize, fold);
schedule/ fine-tunes between them (`Finetune`: training settings, teaching, validation, device, run
folder). Registered models (`list_models()`) load with no `model=`. Codecs, pruning methods, runtimes,
distillation losses and file formats live in registries (`register_codec`, `register_pruner`,
`register_runtime`, `register_kd_loss`, `register_format`): one class and one registration each, and
the CLI's choices and help read them.
"""

import os

# Waiting OpenMP threads sleep instead of spinning, unless OMP_WAIT_POLICY says otherwise: a spinning thread
# burns a core that other jobs, or this process's own single-threaded stretches, could use. The demo took the
# same wall time alone and 21% less CPU (benchmarks/contention.py). OpenMP reads it when torch loads it, so it
# takes effect where netcompress is imported before torch (the command line always is).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .compress.codecs import Codec, list_codecs, register_codec
from .compress.lowrank import LowRankConfig, factorize
from .compress.prune import PruneConfig, prune
from .compress.pruners import Pruner, list_pruners, register_pruner
from .compress.quant_config import QuantConfig
from .compress.quantize import QuantizedModel
from .data.augment import AugmentConfig
from .data.folder import ImageFolderData
from .data.split import Split
from .errors import NetcompressError
from .formats.load import ModelFormat, export, list_exporters, load, register_format, save
from .formats.onnx import export_onnx
from .formats.state_dict import load_state_dict
from .measure.cost import count_macs, count_parameters, latency_ms
from .measure.evaluate import evaluate, predict
from .measure.latency import LatencyConfig, LatencyTarget, Runtime, latency, list_runtimes, register_runtime
from .models import create_model, list_models, register_model
from .pipeline.deploy import DeployConfig, Deployment, deploy
from .schedule import Finetune, factorize_and_finetune, prune_iteratively, quantize
from .spec import ModelInfo, ModelSpec, PruningRecord, new_model, spec_of
from .train.distill import DistillConfig, KDLoss, list_kd_losses, register_kd_loss
from .train.fit import TrainConfig, fit
from .train.views import TeacherViews, ViewConfig
from .version import __version__

__all__ = [
    # data
    "ImageFolderData", "Split", "AugmentConfig",
    # models
    "create_model", "new_model", "list_models", "register_model", "ModelSpec", "ModelInfo", "PruningRecord", "spec_of",
    # training and distillation
    "fit", "TrainConfig", "DistillConfig", "KDLoss", "register_kd_loss", "list_kd_losses", "TeacherViews", "ViewConfig",
    "Finetune",
    # compression
    "prune", "prune_iteratively", "PruneConfig", "Pruner", "register_pruner", "list_pruners",
    "factorize", "factorize_and_finetune", "LowRankConfig",
    "quantize", "QuantConfig", "QuantizedModel", "Codec", "register_codec", "list_codecs",
    # files
    "save", "load", "load_state_dict", "export", "export_onnx", "ModelFormat", "register_format", "list_exporters",
    # deployment: every target x precision measured as it ships, the fastest that keeps its accuracy
    "deploy", "DeployConfig", "Deployment",
    # measurement
    "evaluate", "predict", "count_parameters", "count_macs", "latency", "LatencyConfig", "LatencyTarget",
    "Runtime", "list_runtimes", "register_runtime", "latency_ms",
    "NetcompressError", "__version__",
]
