"""Which series of a study is which modality: configurable rules over the series' free text and contrast tags.

A rule for a modality is a dict:

- ``match``: regular expressions (case-insensitive); the series' SeriesDescription, ProtocolName and SequenceName
  (``_`` and ``-`` read as spaces) must match at least one;
- ``exclude``: regular expressions none of which may match;
- ``contrast``: ``true`` (post-contrast only), ``false`` (pre-contrast only) or ``null`` (either). A series counts as
  post-contrast when its ContrastBolusAgent tag is filled or its text matches ``CONTRAST_TEXT``.

Only volume candidates are considered (see ``series``). When several candidates satisfy a rule, the preference
is: 3D acquisitions over 2D, then thinner slices (smaller slice spacing), then finer in-plane spacing. Candidates
that are equal on all three are *ambiguous* and raise, listing them; a datalist item can pin a series with
``"series": {"t1ce": "<SeriesInstanceUID or SeriesNumber>"}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .series import DicomSeries, describe_candidates

__all__ = ["SelectionError", "SeriesChoice", "select_series", "is_post_contrast", "CONTRAST_TEXT", "PRE_CONTRAST_TEXT"]

# Wording that marks a series as pre- or post-contrast, for rules with a ``contrast`` entry.
PRE_CONTRAST_TEXT = r"\bpre\b|pre ?contrast|\bnative?\b|\bw ?o\b|without"
CONTRAST_TEXT = r"\bpost\b|\bgad|\bgd\b|\+ ?c\b|\bc ?\+|contrast|\bce\b|\bt1c\b|t1ce|\bt1gd|\bmdc\b|kontrast|\bkm\b"


class SelectionError(ValueError):
    """A modality that no series, or more than one equally good series, provides; the message lists the series."""


@dataclass
class SeriesChoice:
    modality: str
    series: DicomSeries
    reason: str

    def report(self) -> dict:
        return {**self.series.summary(), "why": self.reason}


def _normalise(text: str) -> str:
    return re.sub(r"[_\-/]+", " ", text.lower())


def is_post_contrast(series: DicomSeries) -> tuple[bool, str]:
    """Whether the series was acquired after contrast injection, and the evidence."""
    if series.contrast_agent.strip():
        return True, f"ContrastBolusAgent '{series.contrast_agent.strip()}'"
    found = re.search(CONTRAST_TEXT, _normalise(series.text))
    if found and not re.search(PRE_CONTRAST_TEXT, _normalise(series.text)):
        return True, f"'{found.group(0).strip()}' in the description"
    return False, "no contrast agent tag or post-contrast wording"


def _matches(rule: Mapping, series: DicomSeries) -> str | None:
    """Why the series satisfies the rule, or None."""
    text = _normalise(series.text)
    hit = next((m for p in rule.get("match", ()) if (m := re.search(p, text))), None)
    if hit is None or any(re.search(p, text) for p in rule.get("exclude", ())):
        return None
    why = f"'{hit.group(0).strip()}' in '{series.text}'"
    wanted = rule.get("contrast")
    if wanted is not None:
        contrast, evidence = is_post_contrast(series)
        if contrast != wanted:
            return None
        why += f", {'post' if contrast else 'pre'}-contrast ({evidence})"
    return why


def _preference(series: DicomSeries) -> tuple:
    in_plane = min(series.pixel_spacing) if series.pixel_spacing else 0.0
    return (series.acquisition_type.upper() != "3D", round(series.slice_spacing, 2), round(in_plane, 2))


def _describe_preference(series: DicomSeries) -> str:
    return f"{series.acquisition_type or 'unknown'} acquisition, {series.slice_spacing:g} mm slice spacing"


def _pinned(modality: str, pin: str, series: Sequence[DicomSeries]) -> SeriesChoice:
    found = [s for s in series if pin in (s.uid, str(s.number))]
    if len(found) != 1:
        raise SelectionError(
            f"{modality}: the datalist pins series '{pin}', which matches {len(found)} series of the study:\n"
            + describe_candidates(list(series))
        )
    if found[0].excluded:
        raise SelectionError(f"{modality}: pinned {found[0].label} cannot be used: {found[0].excluded}.")
    return SeriesChoice(modality, found[0], "pinned by the datalist")


def select_series(
    series: Sequence[DicomSeries],
    rules: Mapping[str, Mapping],
    pinned: Mapping[str, str] | None = None,
    how_to_pin: str = 'Pin one with "series": {{"{modality}": "<SeriesInstanceUID or SeriesNumber>"}} in the '
                      "datalist item",
) -> dict[str, SeriesChoice]:
    """Choose one series per modality.

    Args:
        series: the study's series (``index_dicom_files``).
        rules: ``{modality: rule}``, one per modality to find, in order (an application's, e.g.
            ``apps.brats.labels.SERIES_RULES``).
        pinned: ``{modality: SeriesInstanceUID or SeriesNumber}`` chosen by the user, bypassing the rules.
        how_to_pin: what the caller's user can do when a modality has no series or several (``{modality}`` is
            filled in): the front end's own way of pinning a series, or what to do where there is none.

    Raises:
        SelectionError: a pinned modality without a rule, a modality with no matching candidate or with equally
            preferred candidates, or one series chosen twice.
    """
    pinned = dict(pinned or {})
    unknown = sorted(set(pinned) - set(rules))
    if unknown:
        raise SelectionError(f"series pinned for {unknown}, which are not modalities of this task ({list(rules)}).")
    candidates = [s for s in series if not s.excluded]
    chosen: dict[str, SeriesChoice] = {}
    for modality in rules:
        if modality in pinned:
            chosen[modality] = _pinned(modality, str(pinned[modality]), series)
            continue
        matching = [(s, why) for s in candidates if (why := _matches(rules[modality], s))]
        if not matching:
            raise SelectionError(
                f"no series for {modality} (rule {dict(rules[modality])}). Series in the study:\n"
                + describe_candidates(list(series))
                + f"\n{how_to_pin.format(modality=modality)}, or adjust series_rules."
            )
        matching.sort(key=lambda m: _preference(m[0]))
        best, why = matching[0]
        tied = [s for s, _ in matching if _preference(s) == _preference(best)]
        if len(tied) > 1:
            raise SelectionError(
                f"{modality} is ambiguous: {len(tied)} series match equally well ({_describe_preference(best)}):\n"
                + describe_candidates(tied)
                + f"\n{how_to_pin.format(modality=modality)}."
            )
        reason = f"{why}; {_describe_preference(best)}"
        if len(matching) > 1:
            reason += "; preferred (3D, then thinner slices) over " + ", ".join(
                f"#{s.number} '{s.description}' ({_describe_preference(s)})" for s, _ in matching[1:]
            )
        chosen[modality] = SeriesChoice(modality, best, reason)
    used = [c.series.uid for c in chosen.values()]
    for choice in chosen.values():
        if used.count(choice.series.uid) > 1:
            others = [m for m, c in chosen.items() if c.series.uid == choice.series.uid]
            raise SelectionError(f"{choice.series.label} was chosen for {', '.join(others)}; each modality needs "
                                 f"its own series. {how_to_pin.format(modality=others[0])}, or adjust series_rules.")
    return chosen
