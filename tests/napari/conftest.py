"""Headless Qt for the napari plugin's tests.

Qt draws nowhere (``QT_QPA_PLATFORM=offscreen``, set before Qt is imported unless the
caller chose a platform). The offscreen platform has no OpenGL context, and napari asks
OpenGL for its extensions and texture limits when a layer gets its canvas visual; that
query fails there (``glGetString`` returns None: vispy issue 2736). Without a context,
the answers below stand in: nothing is drawn offscreen, so they only have to be
plausible."""
from __future__ import annotations

import functools
import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

_NO_EXTENSIONS = ""
_TEXTURE_SIZES = (2048, 2048)


@functools.cache
def _has_opengl() -> bool:
    from qtpy.QtGui import QOffscreenSurface, QOpenGLContext

    context, surface = QOpenGLContext(), QOffscreenSurface()
    surface.create()
    found = context.create() and context.makeCurrent(surface)
    if found:
        context.doneCurrent()
    surface.destroy()
    return found


@pytest.fixture(autouse=True)
def _opengl_answers(request):
    """Stand-in OpenGL answers for napari's canvas visuals, for the tests with a viewer,
    when Qt has no OpenGL."""
    if "make_napari_viewer" not in request.fixturenames:
        return
    request.getfixturevalue("qapp")  # Qt's application, kept by pytest-qt for the session
    if _has_opengl():
        return
    monkeypatch = request.getfixturevalue("monkeypatch")
    from napari._vispy import canvas
    from napari._vispy.layers import base, image, labels
    from napari._vispy.utils import gl

    for module in (gl, image):
        monkeypatch.setattr(module, "get_gl_extensions", lambda: _NO_EXTENSIONS)
    for module in (gl, image, base, labels, canvas):
        monkeypatch.setattr(module, "get_max_texture_sizes", lambda: _TEXTURE_SIZES)
