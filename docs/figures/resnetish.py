"""A ResNet-style ImageNet-sized model with random weights (seeded), for the README's photo figure:
nothing downloaded, nothing trained. Its predictions mean nothing; the figure shows the layout."""
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))

    def forward(self, x):
        return torch.relu(x + self.body(x))


def resnetish(width=8, classes=1000, seed=0):  # a pretrained model: its weights come with it
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, width, 7, stride=4, padding=3), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.MaxPool2d(2), Block(width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, classes))
