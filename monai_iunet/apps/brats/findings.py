"""A case's results in words, once: the tumour volumes, the RANO measurements, the scan QC, the modality check, the
uncertainty and whether a human review is needed, from a report entry (``BatchSegmentation``'s). ``segment`` prints
them, the overview and the DICOM summary page show them, the MONAI Deploy application and the node log them (a
flagged one as a warning)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Finding", "case_findings", "VOLUME_ORDER"]

VOLUME_ORDER = ("WT", "TC", "ET", "NCR", "ED")


class Finding(NamedTuple):
    """One line about a case: what (``name``), in words (``text``), and whether it asks for a human look."""

    name: str
    text: str
    flagged: bool = False

    def __str__(self) -> str:
        return f"{self.name}: {self.text}"


def case_findings(entry: dict) -> list[Finding]:
    """The findings present in a report entry, in reading order."""
    findings = []
    volumes = entry.get("volumes_ml")
    if volumes:
        findings.append(Finding("tumour volumes", ", ".join(f"{n} {volumes[n]:.1f} mL" for n in VOLUME_ORDER
                                                            if n in volumes)
                                + "  (WT whole tumour, TC tumour core, ET enhancing, NCR necrotic core, ED edema)"))
    rano = entry.get("rano")
    if rano is not None:
        lesions = rano["lesions"]
        largest = (f"; largest {lesions[0]['longest_mm']:.0f} x {lesions[0]['perpendicular_mm']:.0f} mm"
                   if lesions else "")
        findings.append(Finding("RANO", f"{rano['measurable']} measurable enhancing lesion(s) of {len(lesions)}, sum "
                                        f"of products {rano['sum_of_products_mm2']:.0f} mm2{largest}"))
    qc = entry.get("qc") or {}
    if qc.get("score") is not None:
        typical = f"{qc['score']:.2f} {qc.get('units', 'bits/dim')}; typical {qc.get('lower_threshold', '-inf')} to " \
                  f"{qc.get('threshold')}"
        findings.append(Finding("scan QC", (f"FLAGGED: {qc.get('why', 'unlike the BraTS training cases')}; check the "
                                            f"series, their order and the pre-processing ({typical})")
                                if qc.get("flagged") else f"looks like the training cases ({typical})",
                                bool(qc.get("flagged"))))
    modalities = entry.get("modality_check") or {}
    if "flagged" in modalities:
        ratio = (f" (log-likelihood ratio {modalities['log_likelihood_ratio']}, threshold {modalities['threshold']})"
                 if "log_likelihood_ratio" in modalities else "")
        findings.append(Finding("modality check", ("FLAGGED: " + "; ".join(modalities["findings"])
                                                   + "; check which series went into which slot"
                                                   if modalities["flagged"] else
                                                   "each slot holds the contrast it should") + ratio,
                                bool(modalities["flagged"])))
    uncertainty = entry.get("uncertainty") or {}
    if uncertainty.get("score") is not None:
        findings.append(Finding("uncertainty", ("HIGH, the segmentation is likely wrong in places, review it"
                                                if uncertainty.get("flagged") else "low")
                                + f" (score {uncertainty['score']:.3f}, flagged above {uncertainty['threshold']:.3f})",
                                bool(uncertainty.get("flagged"))))
    elif uncertainty:
        findings.append(Finding("uncertainty", uncertainty.get("why", "not measured")))
    review = entry.get("review")
    if review:
        findings.append(Finding("review", "NEEDED (" + ", ".join(review["because"]) + " flagged the case)"
                                if review["needed"] else "no warning raised (scan QC, modality check, uncertainty)",
                                bool(review["needed"])))
    return findings
