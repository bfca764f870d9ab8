"""VideoCrafter2 (AILab-CVC/VideoCrafter, base_512_v2): 3D U-Net, converter, VideoModel."""
from vip.models.videocrafter2.loading import load
from vip.models.videocrafter2.model import VideoCrafter2Model

__all__ = ["VideoCrafter2Model", "load"]
