"""A small live plot of the training loss and the validation score, drawn with
QPainter: no plotting library to embed, and cheap enough to redraw at every step."""
from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOUR = QColor(80, 160, 255)
SCORE_COLOUR = QColor(255, 170, 40)


class CurvePlot(QWidget):
    """Loss per step (left axis, its own range) and validation AP@0.5 of the painted
    objects (right axis, 0 to 1) against the training step."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.loss: list[tuple[int, float]] = []
        self.score: list[tuple[int, float]] = []
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def clear(self) -> None:
        self.loss, self.score = [], []
        self.update()

    def add_loss(self, step: int, value: float) -> None:
        if math.isfinite(value):
            self.loss.append((step, value))
            self.update()  # a queued repaint: many calls between two frames cost one paint

    def add_score(self, step: int, value: float) -> None:
        if math.isfinite(value):
            self.score.append((step, value))
            self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        text = self.palette().color(self.foregroundRole())
        font = painter.fontMetrics()
        left, right = font.horizontalAdvance("0.000") + 8, font.horizontalAdvance("1.0") + 8
        top, bottom = font.height(), font.height() + 6
        area = QRectF(left, top, max(self.width() - left - right, 10), max(self.height() - top - bottom, 10))
        painter.setPen(QPen(text, 1))
        painter.drawRect(area)
        last = max([s for s, _ in self.loss + self.score] or [1])
        painter.drawText(QPointF(area.left(), area.bottom() + font.ascent() + 4), "0")
        painter.drawText(QPointF(area.right() - font.horizontalAdvance(f"step {last}"),
                                 area.bottom() + font.ascent() + 4), f"step {last}")
        if self.loss:
            values = [v for _, v in self.loss]
            lo, hi = min(values), max(values)
            hi = hi if hi > lo else lo + 1
            painter.setPen(QPen(LOSS_COLOUR, 1))
            painter.drawText(QPointF(2, area.top() + font.ascent()), f"{hi:.3g}")
            painter.drawText(QPointF(2, area.bottom()), f"{lo:.3g}")
            painter.drawText(QPointF(area.left() + 4, area.top() - 3), "loss")
            self._curve(painter, area, self.loss, last, lo, hi, LOSS_COLOUR)
        painter.setPen(QPen(SCORE_COLOUR, 1))
        painter.drawText(QPointF(area.right() + 4, area.top() + font.ascent()), "1")
        painter.drawText(QPointF(area.right() + 4, area.bottom()), "0")
        label = "validation AP@0.5 (painted objects)"
        painter.drawText(QPointF(area.right() - font.horizontalAdvance(label) - 4, area.top() - 3), label)
        if self.score:
            self._curve(painter, area, self.score, last, 0.0, 1.0, SCORE_COLOUR, dots=True)
        painter.end()

    @staticmethod
    def _curve(painter, area, points, last, lo, hi, colour, dots=False):
        def at(step, value):
            x = area.left() + area.width() * step / max(last, 1)
            return QPointF(x, area.bottom() - area.height() * (value - lo) / (hi - lo))

        path = QPainterPath(at(*points[0]))
        for step, value in points[1:]:
            path.lineTo(at(step, value))
        painter.setPen(QPen(colour, 1.5))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawPath(path)
        if dots:
            painter.setBrush(colour)
            for step, value in points:
                painter.drawEllipse(at(step, value), 2.5, 2.5)
