"""What torch calls make of their arguments, for the engine: which calls produce probabilities or
log-probabilities, which keep a tensor what it was (shape-only operations, selections, casts),
which return the module they are given (wrappers, ``.cuda()``), and the families of classes
rules ask about (optimizers, GradScalers, losses, activations, recurrent and 3-D layers).

Tables and small predicates only; the engine (:mod:`.engine`) applies them.
"""

from __future__ import annotations

from collections.abc import Mapping

from trainlint.analysis.values.domain import TensorKind

PRODUCER_FUNCTIONS: Mapping[str, TensorKind] = {
    "torch.softmax": "softmax",
    "torch.nn.functional.softmax": "softmax",
    "torch.special.softmax": "softmax",
    "torch.sigmoid": "sigmoid",
    "torch.nn.functional.sigmoid": "sigmoid",
    "torch.special.expit": "sigmoid",
    "torch.log_softmax": "log_softmax",
    "torch.nn.functional.log_softmax": "log_softmax",
    "torch.special.log_softmax": "log_softmax",
    "torch.nn.functional.logsigmoid": "log_sigmoid",
    "torch.log": "log",
}
PRODUCER_MODULES: Mapping[str, TensorKind] = {
    "torch.nn.Softmax": "softmax",
    "torch.nn.modules.activation.Softmax": "softmax",
    "torch.nn.Sigmoid": "sigmoid",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.LogSoftmax": "log_softmax",
    "torch.nn.modules.activation.LogSoftmax": "log_softmax",
    "torch.nn.LogSigmoid": "log_sigmoid",
    "torch.nn.modules.activation.LogSigmoid": "log_sigmoid",
}
# Tensor methods and torch functions that select values: a probability stays one.
SELECTING_METHODS = frozenset({"gather", "take_along_dim", "index_select", "masked_select"})
SELECTING_FUNCTIONS = frozenset({"torch.gather", "torch.take_along_dim", "torch.index_select", "torch.masked_select"})
# Shape methods move values without changing them: log(p.view(-1)) == log(p).view(-1) exactly.
SHAPE_METHODS = frozenset(
    {"squeeze", "unsqueeze", "view", "reshape", "flatten", "contiguous", "view_as", "reshape_as", "expand",
     "expand_as", "permute", "transpose", "t", "movedim", "unflatten", "narrow", "select", "chunk", "split",
     "unbind"}
)
# Classes of torch spelled in lower case (context managers): a call of one builds an instance,
# which a `with` may enter later (`ctx = torch.autocast(...)`, then `with ctx:`).
LOWERCASE_CLASSES = frozenset({
    "torch.autocast", "torch.amp.autocast", "torch.amp.autocast_mode.autocast", "torch.cuda.amp.autocast",
    "torch.cpu.amp.autocast", "torch.no_grad", "torch.enable_grad", "torch.inference_mode",
})
# Tensor factories: what they make carries no gradient (unless ``requires_grad=True`` is passed).
FACTORY_FUNCTIONS = frozenset({
    "torch.arange", "torch.zeros", "torch.zeros_like", "torch.full", "torch.full_like", "torch.empty",
    "torch.empty_like", "torch.rand", "torch.rand_like", "torch.randn", "torch.randn_like", "torch.randint",
    "torch.randint_like", "torch.randperm", "torch.linspace", "torch.logspace", "torch.eye", "torch.tensor",
    "torch.from_numpy", "torch.tril_indices", "torch.triu_indices",
})
FACTORY_METHODS = frozenset({"new_zeros", "new_ones", "new_full", "new_empty", "new_tensor"})
CAST_METHODS = frozenset({"float", "double", "to", "type", "half", "bfloat16", "cuda", "cpu", "type_as"})
JOINING_FUNCTIONS = frozenset({"torch.cat", "torch.stack", "torch.concat", "torch.concatenate", "torch.hstack",
                               "torch.vstack"})
FLOOR_FUNCTIONS = frozenset({"torch.clamp", "torch.clip", "torch.clamp_min", "torch.max", "torch.maximum", "torch.fmax"})
FLOOR_METHODS = frozenset({"clamp", "clamp_min", "clip", "clamp_", "clamp_min_", "clip_", "maximum"})

# Calls that return the model they are given (as their first argument).
WRAPPERS = frozenset({
    "torch.nn.DataParallel", "torch.nn.parallel.DataParallel",
    "torch.nn.parallel.DistributedDataParallel", "torch.nn.parallel.distributed.DistributedDataParallel",
    "torch.compile", "torch.jit.script", "torch.jit.trace", "copy.deepcopy",
    "torch.nn.SyncBatchNorm.convert_sync_batchnorm", "torch.ao.quantization.prepare",
    "torch.distributed.fsdp.FullyShardedDataParallel",
})
# The same for names written bare with an unresolved import (``DDP(model)`` after a star import).
WRAPPER_TAILS = frozenset({"DataParallel", "DistributedDataParallel", "DDP", "FSDP", "FullyShardedDataParallel"})
# Methods that return the module or tensor they are called on.
SELF_RETURNING = frozenset({
    "to", "cuda", "cpu", "float", "half", "bfloat16", "double", "train", "eval", "requires_grad_",
    "to_empty", "apply", "share_memory", "xpu", "type",
})
# Context managers of loss scaling whose ``as`` name is their first argument times the loss scale:
# apex's ``with amp.scale_loss(loss, optimizer) as scaled_loss: scaled_loss.backward()``.
LOSS_SCALING_CONTEXTS = frozenset({"scale_loss"})
# Class methods of library base classes that build an instance of the class they are called on
# (``BertForSequenceClassification.from_pretrained(...)`` of a project subclass of a HF model).
ALTERNATIVE_CONSTRUCTORS = frozenset({"from_pretrained", "from_config"})
# Methods returning their arguments in order (``accelerator.prepare``, ``fabric.setup``, apex).
PASSTHROUGH_METHODS = frozenset({"prepare", "setup", "initialize", "prepare_model"})
PARAMETER_METHODS = frozenset({"parameters", "named_parameters"})
CONTAINER_MODULES = frozenset({
    "torch.nn.Sequential", "torch.nn.modules.container.Sequential",
})

GRAD_SCALERS = frozenset({
    "torch.amp.GradScaler",
    "torch.amp.grad_scaler.GradScaler",
    "torch.cuda.amp.GradScaler",
    "torch.cuda.amp.grad_scaler.GradScaler",
    "torch.cpu.amp.GradScaler",
    "torch.cpu.amp.grad_scaler.GradScaler",
    "torch.distributed.fsdp.sharded_grad_scaler.ShardedGradScaler",
})
DEFAULT_INIT_SCALE = 2.0**16

# Registrations of a function that autograd calls with gradients during the backward pass, and
# which of its positional parameters receive them: a tensor's hook gets the gradient; a module's
# backward hook gets (module, grad_input, grad_output), its pre-hook (module, grad_output), tuples
# of gradients; a parameter's post-accumulate hook gets the parameter (its ``.grad`` is the gradient).
GRADIENT_HOOK_METHODS: Mapping[str, tuple[int, ...]] = {
    "register_hook": (0,),
    "register_full_backward_hook": (1, 2),
    "register_backward_hook": (1, 2),
    "register_full_backward_pre_hook": (1,),
    "register_post_accumulate_grad_hook": (),
}
GRADIENT_HOOK_FUNCTIONS: Mapping[str, tuple[int, ...]] = {
    "torch.nn.modules.module.register_module_full_backward_hook": (1, 2),
    "torch.nn.modules.module.register_module_backward_hook": (1, 2),
    "torch.nn.modules.module.register_module_full_backward_pre_hook": (1,),
}
OPTIMIZER_LIBRARIES = ("torch.optim.", "transformers.", "bitsandbytes.", "apex.optimizers.", "timm.optim.",
                       "deepspeed.ops.", "torch_optimizer.", "lion_pytorch.")
# Optimizers whose update divides by a running magnitude of the gradient: multiplying every
# gradient by k leaves the step unchanged (but for epsilon). Those that add `weight_decay * p` to
# the gradient (L2) before that are COUPLED_DECAY: a summed gradient outweighs the decay k times.
COUPLED_DECAY = frozenset({
    "torch.optim.Adam", "torch.optim.Adamax", "torch.optim.NAdam", "torch.optim.RAdam", "torch.optim.RMSprop",
    "torch.optim.Adagrad", "torch.optim.Adadelta", "torch.optim.SparseAdam",
})
SCALE_INVARIANT_OPTIMIZERS = COUPLED_DECAY | frozenset({
    "torch.optim.AdamW", "transformers.AdamW", "transformers.optimization.AdamW", "apex.optimizers.FusedAdam",
    "bitsandbytes.optim.Adam8bit", "bitsandbytes.optim.AdamW8bit", "bitsandbytes.optim.AdamW",
    "bitsandbytes.optim.Adam",
})

CONV3D = frozenset({"torch.nn.Conv3d", "torch.nn.LazyConv3d", "torch.nn.functional.conv3d", "torch.conv3d",
                    "torch.nn.modules.conv.Conv3d"})
RECURRENT = frozenset({
    "torch.nn.RNN", "torch.nn.LSTM", "torch.nn.GRU", "torch.nn.RNNCell", "torch.nn.LSTMCell",
    "torch.nn.GRUCell", "torch.nn.Transformer", "torch.nn.TransformerEncoder",
    "torch.nn.TransformerDecoder", "torch.nn.TransformerEncoderLayer", "torch.nn.TransformerDecoderLayer",
})
# Functions of model zoos whose result is a model (its layers unknown unless listed below).
MODEL_FACTORIES = ("torchvision.models.", "timm.create_model", "timm.models.", "segmentation_models_pytorch.")
# Library model factories whose layers are known without reading them (they are not project code).
LIBRARY_LAYERS: Mapping[str, frozenset[str]] = {
    "torchvision.models.video": frozenset({"torch.nn.Conv3d"}),
}


def is_optimizer_class(qualified: str) -> bool:
    if "lr_scheduler" in qualified or "Scheduler" in qualified:
        return False
    return qualified.startswith(OPTIMIZER_LIBRARIES) and qualified.rpartition(".")[2][:1].isupper()


def is_torch_layer(qualified: str) -> bool:
    """A class of ``torch.nn`` (``torch.nn.LSTM``, ``torch.nn.modules.loss.BCELoss``)."""
    return qualified.startswith("torch.nn.") and qualified.rpartition(".")[2][:1].isupper()


def is_loss_class(qualified: str) -> bool:
    return is_torch_layer(qualified) and qualified.endswith("Loss")


def is_activation_class(qualified: str) -> bool:
    return qualified in PRODUCER_MODULES or (
        is_torch_layer(qualified) and ".activation." in qualified
    ) or qualified.rpartition(".")[2] in _ACTIVATIONS and qualified.startswith("torch.nn.")


_ACTIVATIONS = frozenset({
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Tanh", "Sigmoid",
    "Softmax", "LogSoftmax", "Softplus", "Softsign", "Hardtanh", "Hardswish", "Hardsigmoid", "LogSigmoid",
    "Tanhshrink", "Threshold", "GLU", "Identity", "Dropout", "Flatten",
})

# Layers that compute differently in train() and eval() mode: dropout (on in training only) and
# batch norm (batch statistics in training, running ones in eval); nn.Transformer layers build
# dropout with p=0.1 by default.
MODE_DEPENDENT_LAYERS = frozenset({
    "torch.nn.Dropout", "torch.nn.Dropout1d", "torch.nn.Dropout2d", "torch.nn.Dropout3d", "torch.nn.AlphaDropout",
    "torch.nn.FeatureAlphaDropout", "torch.nn.BatchNorm1d", "torch.nn.BatchNorm2d", "torch.nn.BatchNorm3d",
    "torch.nn.SyncBatchNorm", "torch.nn.LazyBatchNorm1d", "torch.nn.LazyBatchNorm2d", "torch.nn.LazyBatchNorm3d",
    "torch.nn.Transformer", "torch.nn.TransformerEncoderLayer", "torch.nn.TransformerDecoderLayer",
    "torch.nn.modules.dropout.Dropout", "torch.nn.modules.batchnorm.BatchNorm2d",
})
# torchvision classification networks, each built with batch norm or dropout (ViT and Swin are
# not listed: their dropout defaults to 0).
MODE_DEPENDENT_ZOO = (
    r"(resnet|resnext|wide_resnet|vgg|alexnet|densenet|inception|googlenet|mobilenet|shufflenet|efficientnet"
    r"|mnasnet|regnet|squeezenet)"
)

DATA_LOADERS = frozenset({"torch.utils.data.DataLoader", "torch.utils.data.dataloader.DataLoader"})
DISTRIBUTED_SAMPLERS = frozenset({
    "torch.utils.data.DistributedSampler", "torch.utils.data.distributed.DistributedSampler",
})
# Samplers that draw from the whole dataset in every process.
WHOLE_DATASET_SAMPLERS = frozenset({
    f"torch.utils.data{module}.{name}"
    for module in ("", ".sampler")
    for name in ("RandomSampler", "WeightedRandomSampler", "SequentialSampler", "SubsetRandomSampler")
})
DDP_WRAPPERS = frozenset({
    "torch.nn.parallel.DistributedDataParallel", "torch.nn.parallel.distributed.DistributedDataParallel",
})
