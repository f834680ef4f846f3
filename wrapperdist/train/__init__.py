"""Plain-PyTorch training: loop, schedule, checkpoints, evaluation. Never imports Ray or MLflow."""

from wrapperdist.train.checkpoint import load_checkpoint, save_checkpoint
from wrapperdist.train.evaluate import answer_accuracy
from wrapperdist.train.loop import TrainResult, loss_on_batch, make_optimizer, next_token_loss, train
from wrapperdist.train.schedule import warmup_cosine

__all__ = [
    "TrainResult", "answer_accuracy", "load_checkpoint", "loss_on_batch", "make_optimizer", "next_token_loss",
    "save_checkpoint", "train", "warmup_cosine",
]
