"""vggtune: transfer learning with VGG16, from a folder of labelled images to a trained classifier."""
from .api import AugmentConfig, Predictor, TrainConfig, evaluate, load, train
from .errors import UserError

__version__ = "0.1.0"
__all__ = ["train", "evaluate", "load", "Predictor", "TrainConfig", "AugmentConfig", "UserError", "__version__"]
