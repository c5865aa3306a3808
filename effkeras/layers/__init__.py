from effkeras.layers.common import ChannelPad, option_a_shortcut

__all__ = ["ChannelPad", "option_a_shortcut"]
