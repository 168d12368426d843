"""Networks and losses of the method: tapped backbones, classifier heads, CAMs, pseudo masks,
DeepLabV3+, the gate, device/precision choice and safe model folders. No slide I/O here."""
