"""``model_card.md``: a human-readable summary of an export."""

from __future__ import annotations

import json

from serving.manifest import Manifest, OutputContract


def heads_lines(output: OutputContract) -> list[str]:
    """Return the model card lines that list the graph outputs."""
    if output.heads == "single":
        return [f"- Heads: one classification head (`{output.name}` over all classes)"]
    lines = [f"- Heads: three; `{output.name}` `[batch, num_classes]` combines them: {output.combination}"]
    for head in output.head_outputs:
        detail = ", ".join(head.class_names) if head.kind == "logits" else head.unit
        lines.append(f"  - `{head.name}` {head.shape}: {head.head} {head.kind} ({detail})")
    if output.age_cutoffs is not None:
        lines.append(f"  - age cut-offs: {output.age_cutoffs} years")
    return lines


def render_model_card(manifest: Manifest, config: dict) -> str:
    lines = [
        f"# {manifest.name} version {manifest.version}",
        "",
        f"- Architecture: timm `{manifest.architecture}`",
        f"- Classes ({manifest.num_classes}): {', '.join(manifest.class_names)}",
        *heads_lines(manifest.output),
        f"- Input: `{manifest.input.format}` {manifest.input.height}x{manifest.input.width} "
        f"{manifest.input.color_mode}, resize `{manifest.input.resize}` ({manifest.input.interpolation}), "
        f"mean {manifest.input.mean}, std {manifest.input.std}",
        f"- ONNX: opset {manifest.opset}, exporter `{manifest.exporter}`"
        + (f" ({manifest.exporter_notes})" if manifest.exporter_notes else ""),
        f"- TorchScript: `{manifest.torchscript_method}`",
        f"- Created: {manifest.created}",
        "",
        "## Validation metrics from training",
        "",
        "| metric | value |",
        "| --- | --- |",
        *[f"| {name} | {value:.4f} |" for name, value in sorted(manifest.metrics.items())],
        "",
        f"## Parity against eager PyTorch (tolerance {manifest.parity_tolerance:g})",
        "",
        "| measure | value |",
        "| --- | --- |",
        *[f"| {name} | {value:.3g} |" for name, value in sorted(manifest.parity.items())],
        "",
    ]
    for name, variant in manifest.variants.items():
        lines += [
            f"## Variant `{name}` ({variant.file})",
            "",
            *[
                f"- {key}: {value:.4g}"
                for key, value in sorted({**variant.parity, **variant.metrics}.items())
            ],
            *([f"- {variant.notes}"] if variant.notes else []),
            "",
        ]
    lines += [
        "## Training configuration",
        "",
        "```json",
        json.dumps(config, indent=2),
        "```",
        "",
        "## Library versions",
        "",
        *[f"- {name} {version}" for name, version in sorted(manifest.versions.items())],
        "",
    ]
    return "\n".join(lines)
