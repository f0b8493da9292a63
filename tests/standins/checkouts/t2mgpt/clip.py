"""``import clip`` in this checkout gives the CLIP stand-in (T2M-GPT's scripts import OpenAI CLIP)."""
import sys

import standins.clip

sys.modules[__name__] = standins.clip
