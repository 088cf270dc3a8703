"""The published size and cost of every zoo model, to check ours against.

Figures are the papers' or official READMEs' (ImageNet-1k classifiers at 224 x 224); FLOPs are
multiply-accumulates, the convention these papers use. Where the official code disagrees with
its paper, ``official_params`` holds the code's count and the model is checked against that.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PUBLISHED", "Published", "rounds_to"]


@dataclass(frozen=True)
class Published:
    """One model's published figures.

    Args:
        params: Parameter count as published, e.g. ``"4.08M"`` (its decimals give the precision).
        flops: FLOPs (MACs) at 224 x 224 as published, e.g. ``"0.9G"``, or ``None`` if not given.
        source: Where the figures come from.
        official_params: The official code's exact parameter count where it differs from the paper.
    """

    params: str | None
    flops: str | None
    source: str
    official_params: int | None = None

    @property
    def params_value(self) -> float | None:
        """``params`` as a number."""
        return None if self.params is None else _value(self.params)

    @property
    def flops_value(self) -> float | None:
        """``flops`` as a number."""
        return None if self.flops is None else _value(self.flops)


_UNITS = {"K": 1e3, "M": 1e6, "G": 1e9}


def _value(text: str) -> float:
    return float(text[:-1]) * _UNITS[text[-1]]


def rounds_to(count: float, published: str) -> bool:
    """Whether ``count`` rounds to ``published`` at its precision (``"4.08M"``: two decimals of M).

    Args:
        count: The measured number.
        published: The published figure with its unit.

    Returns:
        ``True`` if they agree.

    Examples:
        >>> rounds_to(28_288_354, "28M"), rounds_to(4_105_000, "4.1M"), rounds_to(4_160_000, "4.1M")
        (True, True, False)
    """
    number, unit = published[:-1], published[-1]
    decimals = len(number.partition(".")[2])
    return round(count / _UNITS[unit], decimals) == float(number)


_SWIN = "Swin Transformer (Liu et al., ICCV 2021), Table 1"
_DWNET = "Atten4Vis/DemystifyLocalViT README"
_VAN = "Visual Attention Network (Guo et al., CVMJ 2023), official README"
_ACMIX = "ACmix (Pan et al., CVPR 2022), official README"
_KW = "KernelWarehouse (Li & Yao, ICML 2024), official README"
_UNIFORMER = "UniFormer (Li et al., TPAMI 2023), official README"
_MIXFORMER = "MixFormer (Chen et al., CVPR 2022), Table 1 (FLOPs; no ImageNet parameter counts are published)"
_ODCONV = "ODConv (Li, Zhou & Yao, ICLR 2022), official README"
_DCD = "DCD (Li et al., ICLR 2021); the official code's counts with its dynamic classifier (MobileNetV2: fc_squeeze 16)"
_CONVNEXT = "ConvNeXt (Liu et al., CVPR 2022), Table 1"

PUBLISHED: dict[str, Published] = {
    "swin_tiny": Published("28M", "4.5G", _SWIN),
    "swin_small": Published("50M", "8.7G", _SWIN),
    "swin_base": Published("88M", "15.4G", _SWIN),
    "dwnet_tiny": Published("24M", "3.8G", _DWNET),
    "dwnet_base": Published("74M", "12.9G", _DWNET),
    "dynamic_dwnet_tiny": Published("51M", "3.8G", _DWNET),
    "dynamic_dwnet_base": Published("162M", "13.0G", _DWNET),
    # The README publishes no figures for the inhomogeneous models: the official code's counts.
    "i_dynamic_dwnet_tiny": Published(None, None, _DWNET, official_params=26_244_280),
    "i_dynamic_dwnet_base": Published(None, None, _DWNET, official_params=80_253_608),
    "van_b0": Published("4.1M", "0.9G", _VAN),
    "van_b1": Published("13.9M", "2.5G", _VAN),
    "van_b2": Published("26.6M", "5.0G", _VAN),
    "van_b3": Published("44.8M", "9.0G", _VAN),
    "acmix_resnet26": Published("10.6M", "2.3G", _ACMIX, official_params=10_487_816),
    "acmix_resnet38": Published("14.6M", "2.9G", _ACMIX, official_params=14_410_896),
    "acmix_resnet50": Published("18.6M", "3.6G", _ACMIX, official_params=18_333_976),
    "acmix_swin_tiny": Published("30M", "4.6G", _ACMIX, official_params=28_649_908),
    "acmix_swin_small": Published("51M", "9.0G", _ACMIX, official_params=50_345_080),
    "kw_resnet18_1d4x": Published("4.08M", None, _KW, official_params=4_031_768),
    "kw_resnet18_1d2x": Published("7.43M", None, _KW),
    "kw_resnet18_1x": Published("11.93M", None, _KW),
    "kw_resnet18_2x": Published("23.24M", None, _KW),
    "kw_resnet18_4x": Published("45.86M", None, _KW),
    "kw_resnet50_1d2x": Published("17.64M", None, _KW),
    "kw_resnet50_1x": Published("28.05M", None, _KW),
    "kw_resnet50_4x": Published("102.02M", None, _KW),
    "kw_mobilenetv2_100_1d2x": Published("2.65M", None, _KW),
    "kw_mobilenetv2_100_1x": Published("5.17M", None, _KW),
    "kw_mobilenetv2_100_4x": Published("11.38M", None, _KW),
    "kw_mobilenetv2_050_1d2x": Published("1.47M", None, _KW),
    "kw_mobilenetv2_050_1x": Published("2.85M", None, _KW),
    "kw_mobilenetv2_050_4x": Published("4.65M", None, _KW),
    "kw_convnext_tiny_1x": Published("39.37M", None, _KW),
    "od_resnet18_1x": Published("11.94M", None, _ODCONV),
    "od_resnet18_4x": Published("44.90M", None, _ODCONV),
    "od_resnet50_1x": Published("28.64M", None, _ODCONV),
    "od_resnet50_4x": Published("90.67M", None, _ODCONV),
    "od_mobilenetv2_100_1x": Published("4.94M", None, _ODCONV),
    "od_mobilenetv2_100_4x": Published("11.51M", None, _ODCONV),
    "dcd_resnet18": Published("14.70M", None, _DCD),
    "dcd_resnet50": Published("29.84M", None, _DCD),
    "dcd_mobilenetv2_100": Published("5.72M", None, _DCD),
    "uniformer_small": Published("22M", "3.6G", _UNIFORMER),
    "uniformer_base": Published("50M", "8.3G", _UNIFORMER),
    "mixformer_b0": Published(None, "0.4G", _MIXFORMER, official_params=5_098_767),
    "mixformer_b1": Published(None, "0.7G", _MIXFORMER, official_params=7_887_877),
    "mixformer_b2": Published(None, "0.9G", _MIXFORMER, official_params=9_894_848),
    "mixformer_b3": Published(None, "1.9G", _MIXFORMER, official_params=16_747_808),
    "uo_convnext_tiny": Published("28.6M", "4.5G", _CONVNEXT),
}
"""The published figures of every zoo model, by model name (the test suite checks ours against them)."""
