"""Reads back what ``predict`` writes for viewers and checks it against its masks.

    python benchmarks/viewer_files.py MODEL DICOM_FOLDER --out DIR

Runs ``predict`` on one DICOM series (e.g. the real subset's SCD0000101, 240 images),
then reads every DICOM SEG back with highdicom and with plain pydicom, and the NIfTI
label map with nibabel, and prints: per SEG its segments (label and SNOMED CT code),
whether each referenced instance is one of the source's and each source image of its
phase is referenced, and how many pixels of each segment differ from ``predict``'s mask
of that image; and for the NIfTI, its shape, whether its affine puts each slice where
the DICOM's ImagePositionPatient does, and the pixels that differ from the masks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("dicoms", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import highdicom as hd
    import nibabel as nib
    import pydicom

    from lvseg_search.data.dicom_io import read_image
    from lvseg_search.data.ingest import index_frames
    from lvseg_search.predict import predict

    summary = next(iter(predict(args.model, args.dicoms, args.out, overlays=False,
                                overwrite=True, verbose=False).values()))
    files = sorted(args.dicoms.glob("*.dcm"), key=lambda p: int(p.stem))
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in files}
    study = next(p for p in (args.out / "masks").iterdir())
    masks = {f.stem: np.load(f) for f in study.glob("*.npy")}
    by_uid = {uid: masks[f.stem] for uid, f in sources.items()}
    images = [read_image(f) for f in files]
    indices = index_frames(images).indices
    phase_of = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: p
                for f, (_, p) in zip(files, indices, strict=True)}
    total_differ, total_checked = 0, 0
    print(f"{len(summary['files']['seg'])} SEG file(s), one per phase")
    for name in summary["files"]["seg"]:
        seg = hd.seg.segread(args.out / name)
        plain = pydicom.dcmread(args.out / name)
        referenced = [r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
                      for r in s.ReferencedInstanceSequence]
        phase = {phase_of[u] for u in referenced}
        expected = {u for u, p in phase_of.items() if p in phase}
        differ = 0
        for uid in referenced:
            for d in seg.SegmentSequence:
                got = seg.get_pixels_by_source_instance(
                    source_sop_instance_uids=[uid], segment_numbers=[d.SegmentNumber],
                    combine_segments=False)[0, ..., 0]
                differ += int((got.astype(bool) != (by_uid[uid] == d.SegmentNumber)).sum())
        total_differ += differ
        total_checked += len(referenced)
        segments = ", ".join(
            f"{d.SegmentLabel} (SCT {d.SegmentedPropertyTypeCodeSequence[0].CodeValue})"
            for d in seg.SegmentSequence)
        print(f"{name}: pydicom reads Modality {plain.Modality}, {plain.NumberOfFrames} "
              f"frames; segments {segments}; {len(referenced)} referenced instances, all the "
              f"source's: {set(referenced) <= set(sources)}, every image of phase "
              f"{sorted(phase)} referenced: {set(referenced) == expected}; "
              f"{differ} pixel(s) differ from predict's masks")
    print(f"SEG: {total_checked} images checked, {total_differ} pixel(s) differ in all")
    label_map = nib.load(args.out / summary["files"]["nifti"])
    volume = np.asarray(label_map.dataobj)
    slices = sorted({s for s, _ in indices})
    phases = sorted({p for _, p in indices})
    differ, worst = 0, 0.0
    for f, im, (s, p) in zip(files, images, indices, strict=True):
        differ += int((masks[f.stem]
                       != volume[:, :, slices.index(s), phases.index(p)].T).sum())
        k = slices.index(s)
        ras = label_map.affine @ np.array([0.0, 0.0, k, 1.0])
        lps = np.array([-ras[0], -ras[1], ras[2]])
        worst = max(worst, float(np.abs(lps - np.asarray(im.image_position)).max()))
    print(f"NIfTI {summary['files']['nifti']}: shape {volume.shape}, values "
          f"{sorted(np.unique(volume).tolist())}, {differ} pixel(s) differ from the masks; "
          f"its affine puts each slice's first pixel within {worst:.3f} mm of the DICOM's "
          "ImagePositionPatient")
    (args.out / "viewer_check.json").write_text(json.dumps(
        {"seg_pixels_differ": total_differ, "seg_images": total_checked,
         "nifti_pixels_differ": differ, "nifti_position_mm": worst}, indent=2) + "\n")


if __name__ == "__main__":
    main()
