"""Stand-in for MDM's utils/model_util.py: ``create_model_and_diffusion(args, data)``."""
from standins.mdm import make_mdm


def create_model_and_diffusion(args, data):
    return make_mdm(), None
