"""Reference: a minimal hand-written PyTorch training loop, the floor any CLI trainer is compared to.

The project's own copy of the reference loop (the model followed is ../shared/reference/train_loop.py), so
`benchmarks/train_throughput.py` runs from a fresh clone. Kept deliberately plain: no data pipeline, no metrics,
no checkpoints; synthetic data already in memory.

Usage: python benchmarks/reference_train_loop.py MODEL STEPS BATCH [channels_last] [bf16]
MODEL: lenet | resnet18c (CIFAR-style ResNet-18 from torchvision with 3x3 stem, no maxpool)
Prints images/second over STEPS steps after 3 warm-up steps, on synthetic 3x32x32 data.
"""

import sys
import time

import torch
import torch.nn as nn


def lenet():
    return nn.Sequential(
        nn.Conv2d(3, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


def resnet18c():
    import torchvision

    m = torchvision.models.resnet18(num_classes=10)
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    return m


name, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
opts = set(sys.argv[4:])
torch.manual_seed(0)
model = {"lenet": lenet, "resnet18c": resnet18c}[name]()
x = torch.randn(batch, 3, 32, 32)
y = torch.randint(0, 10, (batch,))
if "channels_last" in opts:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
lossf = nn.CrossEntropyLoss()


def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in opts):
        loss = lossf(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


for _ in range(3):
    step()
t = time.perf_counter()
for _ in range(steps):
    step()
dt = time.perf_counter() - t
print(f"{name} batch={batch} opts={sorted(opts)} images/s={steps * batch / dt:.1f}")
