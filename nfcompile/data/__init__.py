"""Datasets, preprocessing and batches."""

from nfcompile.data.batches import Augment, augment_batch, calibration_array, calibration_images, image_batches
from nfcompile.data.datasets import (DataBundle, DatasetInfo, ImageSet, check_data, list_datasets,
                                     load_data)
from nfcompile.data.preprocess import Preprocessing, decode_image

__all__ = ["Augment", "DataBundle", "DatasetInfo", "ImageSet", "Preprocessing", "augment_batch",
           "calibration_array", "calibration_images", "check_data", "decode_image", "image_batches", "list_datasets",
           "load_data"]
