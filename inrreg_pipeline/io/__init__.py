"""File formats: NIfTI images and ITK/ANTs transform files (nibabel, SimpleITK)."""
