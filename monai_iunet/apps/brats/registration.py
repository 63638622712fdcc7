"""Rigid co-registration of one MR series to another with elastix (``itk-elastix``), for patients who moved between
series. The result is not a resampled image but a corrected affine: the moving image keeps its voxels, its
voxel → world map is composed with the rigid motion, and the one resampling onto the reference grid happens later
(MONAI's ``ResampleToMatch``), so the image is interpolated once.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass

import numpy as np

from ...dicom.geometry import world_map_lps_to_ras

__all__ = ["RigidRegistration", "register_rigid"]

logger = logging.getLogger(__name__)


@dataclass
class RigidRegistration:
    """``fixed_to_moving``: 4×4 map from fixed to moving world points (RAS, mm), as elastix estimates it."""

    fixed_to_moving: np.ndarray
    metric: str
    final_metric_value: float | None

    @property
    def rotation_degrees(self) -> float:
        cos = (np.trace(self.fixed_to_moving[:3, :3]) - 1) / 2
        return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))

    @property
    def translation_mm(self) -> float:
        return float(np.linalg.norm(self.fixed_to_moving[:3, 3]))

    def aligned_affine(self, moving_affine: np.ndarray) -> np.ndarray:
        """The moving image's voxel → world affine that puts it where the fixed image sees it."""
        return np.linalg.inv(self.fixed_to_moving) @ np.asarray(moving_affine, dtype=np.float64)

    def report(self) -> dict:
        return {
            "method": "elastix rigid (EulerTransform)",
            "metric": self.metric,
            "final_metric_value": self.final_metric_value,
            "rotation_degrees": round(self.rotation_degrees, 3),
            "translation_mm": round(self.translation_mm, 3),
        }


def register_rigid(fixed, moving, iterations: int = 250) -> RigidRegistration:
    """Estimate the rigid motion between two channel-first ``MetaTensor`` images (affines to RAS) with elastix's
    default rigid parameter map (multi-resolution, Mattes mutual information, so different MR contrasts register).
    """
    import itk
    from monai.data.itk_torch_bridge import metatensor_to_itk_image

    fixed_image = metatensor_to_itk_image(fixed.float(), channel_dim=0)
    moving_image = metatensor_to_itk_image(moving.float(), channel_dim=0)
    parameters = itk.ParameterObject.New()
    rigid = parameters.GetDefaultParameterMap("rigid", 3)
    rigid["MaximumNumberOfIterations"] = [str(iterations)]
    rigid["AutomaticTransformInitialization"] = ["true"]
    parameters.AddParameterMap(rigid)
    with tempfile.TemporaryDirectory() as log_dir:
        _, result = itk.elastix_registration_method(
            fixed_image, moving_image, parameter_object=parameters, log_to_console=False, log_to_file=True,
            output_directory=log_dir,
        )
        with open(f"{log_dir}/elastix.log") as log:
            values = re.findall(r"Final metric value\s*=\s*(\S+)", log.read())
    found = result.GetParameterMap(0)
    transform = itk.Euler3DTransform[itk.D].New()
    transform.SetCenter([float(v) for v in found["CenterOfRotationPoint"]])
    transform.SetParameters(itk.OptimizerParameters[itk.D]([float(v) for v in found["TransformParameters"]]))
    lps = np.eye(4)
    lps[:3, :3] = itk.array_from_matrix(transform.GetMatrix())
    lps[:3, 3] = np.asarray(transform.GetOffset())
    registration = RigidRegistration(
        fixed_to_moving=world_map_lps_to_ras(lps), metric=str(rigid["Metric"][0]),
        final_metric_value=float(values[-1]) if values else None,
    )
    logger.info("rigid co-registration: %s", registration.report())
    return registration
