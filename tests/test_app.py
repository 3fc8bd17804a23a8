"""The app over HTTP: a real Gradio server on loopback, called through gradio_client."""

import pytest

from censor.errors import CensorError
from censor.studio import Studio


def test_fresh_gallery_is_deterministic(tiny_model):
    studio = Studio(model=tiny_model)
    a = studio.fresh_gallery(3, 2, seed=1)
    b = studio.fresh_gallery(3, 2, seed=1)
    assert len(a) == 3 and a[0].size == (112, 112)
    assert [im.tobytes() for im in a] == [im.tobytes() for im in b]
    with pytest.raises(CensorError, match="1 to 256"):
        studio.fresh_gallery(0, 2, 1)


def test_app_serves_a_gallery(tiny_model):
    from gradio_client import Client

    from app import build_app

    demo = build_app(Studio(model=tiny_model))
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        result = client.predict(4, 5, 7, api_name="/generate")
        assert len(result) == 4
    finally:
        demo.close()
