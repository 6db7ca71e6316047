"""What torchrun starts in the distributed tests: vggtune's command line, with the tiny random-init
backbone of conftest.py in place of the ImageNet weights (each rank builds the same one).

DIE_AT="RANK:STAGE" makes that rank kill itself (SIGKILL, no clean-up) when the stage begins training;
HOME_PER_RANK=1 gives each rank a VGGTUNE_HOME of its own, as on hosts that share no filesystem."""
import os
import signal
import sys

if os.environ.get("HOME_PER_RANK"):
    os.environ["VGGTUNE_HOME"] = os.path.join(os.environ["VGGTUNE_HOME"], f"rank{os.environ.get('RANK', '0')}")

from conftest import tiny_state_dict  # noqa: E402 - after the home is chosen
from vggtune import cli  # noqa: E402
from vggtune.training import schedule as training  # noqa: E402
from vggtune.model import weights  # noqa: E402

LOADED = weights.LoadedWeights(weights.VGG16_IMAGENET1K_V1, tiny_state_dict(), "tiny test weights", "tiny-test")
weights.resolve = lambda record=None, user_file=None: LOADED


def _dying_epoch(rank: str, stage_name: str, real_epoch):
    def train_epoch(run, stage, *args):
        if stage.name == stage_name and os.environ.get("RANK") == rank:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_epoch(run, stage, *args)
    return train_epoch


def api_train(data: str, out: str) -> None:
    """`vggtune.train` from a script, as a user would write one for torchrun."""
    import vggtune
    vggtune.train(data, out=out, epochs=3, finetune_epochs=2, size=32, batch_size=8, views=2, hidden=16,
                  val_split=0.2, test_split=0.2, lr=1e-2, finetune_lr=1e-3, dropout=0.0, precision="fp32")


if __name__ == "__main__":
    if os.environ.get("DIE_AT"):
        training.train_epoch = _dying_epoch(*os.environ["DIE_AT"].split(":"), training.train_epoch)
    if sys.argv[1] == "api-train":
        api_train(*sys.argv[2:])
        sys.exit(0)
    sys.exit(cli.main())
