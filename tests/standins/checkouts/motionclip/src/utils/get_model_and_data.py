"""Stand-in for MotionCLIP's src/utils/get_model_and_data.py: ``get_model_and_data(parameters, split=...)``."""
from standins.motionclip import make_motionclip


def get_model_and_data(parameters, split="train"):
    return make_motionclip(), {"train": None}
