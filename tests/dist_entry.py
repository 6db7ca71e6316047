"""What torchrun starts in the distributed tests: vggtune's command line, with the tiny random-init
backbone of conftest.py in place of the ImageNet weights (each rank builds the same one).

DIE_AT="RANK:STAGE" makes that rank kill itself (SIGKILL, no clean-up) when the stage begins training."""
import os
import signal
import sys

from conftest import tiny_state_dict
from vggtune import cli, training, weights

LOADED = weights.LoadedWeights(weights.VGG16_IMAGENET1K_V1, tiny_state_dict(), "tiny test weights", "tiny-test")
weights.resolve = lambda record=None, user_file=None: LOADED


def _dying_epoch(rank: str, stage_name: str, real_epoch):
    def train_epoch(run, stage, *args):
        if stage.name == stage_name and os.environ.get("RANK") == rank:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_epoch(run, stage, *args)
    return train_epoch


if __name__ == "__main__":
    if os.environ.get("DIE_AT"):
        training.train_epoch = _dying_epoch(*os.environ["DIE_AT"].split(":"), training.train_epoch)
    sys.exit(cli.main())
