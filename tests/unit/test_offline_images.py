import io

import numpy as np
import pytest
from framefleet.tasks.providers.base import ImageGenerationError, ImageRequest
from framefleet.tasks.providers.offline_images import OfflineImageGenerator
from PIL import Image


def generate(**kwargs):
    request = ImageRequest(**{"prompt": "a lighthouse", "aspect_ratio": "16:9", "variation": 1, **kwargs})
    return OfflineImageGenerator().generate(request)


def pixels(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)


def test_deterministic_and_variations_differ():
    assert generate() == generate()
    assert generate() != generate(variation=2)
    assert generate() != generate(prompt="a harbour")


@pytest.mark.parametrize("ratio, size", [("16:9", (512, 288)), ("9:16", (288, 512)), ("1:1", (512, 512)),
                                          ("21:9", (512, 219))])
def test_honours_the_aspect_ratio(ratio, size):
    assert Image.open(io.BytesIO(generate(aspect_ratio=ratio))).size == size


def test_output_is_visibly_derived_from_the_input_image():
    red = io.BytesIO()
    Image.new("RGB", (64, 64), (255, 0, 0)).save(red, format="PNG")
    blue = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 0, 255)).save(blue, format="PNG")
    with_red, with_blue = pixels(generate(input_images=[red.getvalue()])), pixels(generate(input_images=[blue.getvalue()]))
    assert with_red[..., 0].mean() - with_blue[..., 0].mean() > 50
    assert with_blue[..., 2].mean() - with_red[..., 2].mean() > 50


def test_failure_rate_one_raises_an_expected_error():
    generator = OfflineImageGenerator(failure_rate=1.0)
    with pytest.raises(ImageGenerationError):
        generator.generate(ImageRequest(prompt="x", aspect_ratio="1:1", variation=1))


def test_the_call_log_setting_decides_whether_the_offline_provider_bills_in_redis():
    from framefleet.config.settings import Settings
    from framefleet.tasks.providers import IMAGE_GENERATORS

    assert IMAGE_GENERATORS["offline"](Settings()).call_log is not None  # the crash tests' bill
    silent = IMAGE_GENERATORS["offline"](Settings(offline_call_log=False))
    assert silent.call_log is None
    assert silent.generate(ImageRequest(prompt="a lighthouse", aspect_ratio="1:1", variation=1,
                                        job_id="no-such-job")).startswith(b"\x89PNG")  # writes nothing
