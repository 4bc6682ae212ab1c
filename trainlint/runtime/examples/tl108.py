"""TL108: float16 autocast around a 3D convolutional network.

Volumes straight from a 16-bit scanner (intensities up to ~60000, never normalised) go through
Conv3d in float16, whose largest value is 65504: the first convolution sums 27 such voxels and
overflows to Inf, the loss is Inf and the GradScaler skips every step, halving the scale each
time to no avail since the overflow is in the forward pass. bfloat16 has float32's range. The
fix (unsafe: bfloat16 has fewer mantissa bits) switches autocast to bfloat16.
"""

import torch
import torch.nn.functional as F

CONFIRM = {
    "rules": ["TL108"],
    "steps": 12,
    "unsafe_fixes": True,
    "why": "float16 overflows in Conv3d on unnormalised volumes",
    "effects": ["skips", "finite"],
    "shows_with": "Conv3d activations that overflow float16: CUDA autocast on a GPU or mapped to the CPU",
    "original": [("skipped_fraction", ">=", 0.9)],
    "fixed": [("skipped_fraction", "<=", 0.2), ("nonfinite_losses", "==", 0)],
}

STEPS = 12


class VolumeNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv3d(1, 8, kernel_size=3, padding=1)
        self.conv2 = torch.nn.Conv3d(8, 8, kernel_size=3, padding=1)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        features = F.relu(self.conv2(F.relu(self.conv1(volume))))
        return self.head(features.mean(dim=(2, 3, 4)))


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    volumes = torch.randint(20000, 60000, (8, 1, 12, 12, 12), device=device).float()
    labels = torch.randint(0, 2, (8,), device=device)
    model = VolumeNet().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    scaler = torch.amp.GradScaler("cuda")

    for step in range(STEPS):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(model(volumes), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
