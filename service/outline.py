"""A photo's lesion outline for an answer (`options.segment`, `/v1/lesions`): decode with the one service
decoder, segment (models/segmentation), adapt to `LesionOutline`. Blocking: run it in a thread."""

from __future__ import annotations

import asyncio

from models.segmentation import LesionSegmentation, segment
from service.images import DecodedImage, ImageLimits, decode_image
from service.schemas import LesionOutline


def outline_photo(
    data: bytes, limits: ImageLimits, mm_per_pixel: float | None
) -> tuple[DecodedImage, LesionSegmentation, LesionOutline]:
    """Decode one photo and outline its lesion."""
    decoded = decode_image(data, limits)
    seg = segment(decoded.image)
    return decoded, seg, LesionOutline.of(seg, decoded.info.width, mm_per_pixel)


async def outline_in_thread(data: bytes, limits: ImageLimits, mm_per_pixel: float | None) -> LesionOutline:
    """`outline_photo`'s outline, off the event loop."""
    return (await asyncio.to_thread(outline_photo, data, limits, mm_per_pixel))[2]
