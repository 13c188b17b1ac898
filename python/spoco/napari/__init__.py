"""The napari plugin: paint some objects, train, segment them all.

A dock widget (:class:`spoco.napari._widget.SpocoWidget`, registered by the npe2
manifest ``napari.yaml``) trains an embedding network on an image layer and a labels
layer in which only some objects are painted (0 = unlabeled), with spoco's own
:class:`spoco.training.Trainer` and the default recipe of ``spoco train``, and segments
images or whole stacks into new layers. Training and prediction run in worker threads.

The modules below ``_widget`` and ``_plot`` need neither napari nor Qt: ``_data``
turns layers into training pairs and scores, ``_training`` builds and runs the
training, ``_segment`` loads runs and segments. Importing this package imports
nothing heavy.
"""
