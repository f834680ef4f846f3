"""The Tracr setting (paper Sec. 4, App. E.3): transformers whose capability is compiled from a RASP
program rather than learned, then fine-tuned and analysed like the PCFG models.

`programs` and `compile` need the optional `tracr` extra (JAX); `tasks` and the torch model
(`wrapperdist.models.tracr_model`) do not, so a compiled checkpoint runs anywhere torch does."""

from wrapperdist.tracr.tasks import TracrTarget, TracrTasks, reference_answer

__all__ = ["TracrTarget", "TracrTasks", "reference_answer"]
