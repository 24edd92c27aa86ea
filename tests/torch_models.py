"""torch.nn twins of minidl's composite modules and models, with the same module names, so a
minidl state_dict loads into them with a strict ``load_state_dict`` (test helper; needs torch)."""
import torch
from torch import nn


class Residual(nn.Module):
    """``body(x) + shortcut(x)`` (identity when ``shortcut`` is None), as minidl.layers.Residual."""

    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


class ZeroPadShortcut(nn.Module):
    """Option A of He et al.: subsample with the stride, append zero channels."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.extra, self.stride = out_channels - in_channels, stride

    def forward(self, x):
        sampled = x[:, :, ::self.stride, ::self.stride]
        return nn.functional.pad(sampled, (0, 0, 0, 0, 0, self.extra))


class GlobalAvgPool2D(nn.Module):
    """``(N, C, H, W) -> (N, C)`` mean, one module like minidl's."""

    def forward(self, x):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def conv_norm_relu(cin, cout, stride, batch_norm, relu=True):
    """conv 3x3 pad 1 [+ BatchNorm2d] [+ ReLU], the conv with a bias only without BN."""
    layers = [nn.Conv2d(cin, cout, 3, stride, 1, bias=not batch_norm)]
    return layers + ([nn.BatchNorm2d(cout)] if batch_norm else []) + ([nn.ReLU()] if relu else [])


def resnet_cifar(depth=20, batch_norm=True, shortcut="A"):
    """minidl.models.resnet_cifar in torch.nn (norm "batch" or None, position "before")."""
    n = (depth - 2) // 6
    stages, channels = [], 16
    for width, stride in ((16, 1), (32, 2), (64, 2)):
        blocks = []
        for i in range(n):
            step = stride if i == 0 else 1
            body = nn.Sequential(*conv_norm_relu(channels, width, step, batch_norm),
                                 *conv_norm_relu(width, width, 1, batch_norm, relu=False))
            side = None
            if step != 1 or channels != width:
                if shortcut == "A":
                    side = ZeroPadShortcut(channels, width, step)
                else:
                    side = nn.Sequential(nn.Conv2d(channels, width, 1, step, bias=not batch_norm),
                                         *([nn.BatchNorm2d(width)] if batch_norm else []))
            blocks.append(nn.Sequential(Residual(body, side), nn.ReLU()))
            channels = width
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*conv_norm_relu(3, 16, 1, batch_norm), *stages, GlobalAvgPool2D(),
                         nn.Linear(64, 10))


def load_from_minidl(module, minidl_model, dtype=torch.float32):
    """Copy minidl's parameters and buffers into ``module`` (strict), in ``dtype``; returns it."""
    module = module.to(dtype)
    state = {key: torch.from_numpy(value.copy()) for key, value in minidl_model.state_dict().items()}
    module.load_state_dict(state, strict=True)
    return module
