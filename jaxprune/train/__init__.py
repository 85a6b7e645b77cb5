"""The training engine: pure masked steps, scanned epochs, many tickets at once, across devices."""

from jaxprune.train import checkpoint as checkpoint
from jaxprune.train.compiles import CompileCount as CompileCount
from jaxprune.train.compiles import count_compiles as count_compiles
from jaxprune.train.devices import mesh_for as mesh_for
from jaxprune.train.devices import use_compile_cache as use_compile_cache
from jaxprune.train.devices import use_host_devices as use_host_devices
from jaxprune.train.loop import History as History
from jaxprune.train.loop import evaluate as evaluate
from jaxprune.train.loop import fit as fit
from jaxprune.train.loop import shard_tickets as shard_tickets
from jaxprune.train.loop import stack as stack
from jaxprune.train.loop import ticket_mesh as ticket_mesh
from jaxprune.train.loop import train_chunk as train_chunk
from jaxprune.train.loop import unstack as unstack
from jaxprune.train.optim import StepDecay as StepDecay
from jaxprune.train.optim import set_schedule as set_schedule
from jaxprune.train.optim import sgd as sgd
from jaxprune.train.optim import step_decay as step_decay
from jaxprune.train.step import MODES as MODES
from jaxprune.train.step import MaskedSteps as MaskedSteps
from jaxprune.train.step import Steps as Steps
from jaxprune.train.step import TrainState as TrainState
from jaxprune.train.step import cross_entropy as cross_entropy
from jaxprune.train.step import effective_params as effective_params
from jaxprune.train.step import make_steps as make_steps

__all__ = [
    "MODES",
    "CompileCount",
    "History",
    "MaskedSteps",
    "StepDecay",
    "Steps",
    "TrainState",
    "checkpoint",
    "count_compiles",
    "cross_entropy",
    "effective_params",
    "evaluate",
    "fit",
    "make_steps",
    "mesh_for",
    "set_schedule",
    "sgd",
    "shard_tickets",
    "stack",
    "step_decay",
    "ticket_mesh",
    "train_chunk",
    "unstack",
    "use_compile_cache",
    "use_host_devices",
]
