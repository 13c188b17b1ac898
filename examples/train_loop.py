import torch
from torch import nn

import spoco
from spoco.data.synthetic import random_instances

torch.manual_seed(0)
# Toy data: 8 images whose grey values mark the instances; train on 40% of the objects (SPOCO@0.4).
full = [torch.from_numpy(random_instances((64, 64), 12, rng=i)) for i in range(8)]
images = [((lab * 0.37) % 1.0).float()[None] for lab in full]  # (1, H, W)
targets = [spoco.data.sampling.sparsify(lab, 0.4, seed=0, image_index=i) for i, lab in enumerate(full)]

f = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 8, 3, padding=1))  # use a U-Net
g = spoco.EMANet(f, momentum=0.999)        # momentum copy of f, gives the consistency targets
loss_fn = spoco.SPOCOLoss(sparse=True)     # sparse: label 0 = unlabeled
optimizer = torch.optim.Adam(f.parameters(), lr=2e-4, weight_decay=1e-5)

for step in range(20):
    idx = torch.randint(len(images), (2,))
    x = torch.stack([images[i] for i in idx])            # (B, 1, H, W)
    y = torch.stack([targets[i] for i in idx])           # (B, H, W)
    if torch.rand(()) < 0.5:                             # shared geometric augmentation
        x, y = x.flip(-1), y.flip(-1)
    x_f = x + 0.05 * torch.randn_like(x)                 # independent photometric augmentations
    x_g = x + 0.05 * torch.randn_like(x)
    loss = loss_fn(f(x_f), y, g(x_g))                    # g runs without gradients
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    g.update()                                           # after optimizer.step()
    if step % 5 == 0:
        print(step, {k: round(v.item(), 3) for k, v in loss_fn.last_terms.items()})
