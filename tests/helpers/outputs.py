"""What a run (or hugnc-geometry) writes, for tests that check it is there."""

#: The geometry pictures of a run measured on its training split and test set.
GEOMETRY_PICTURES = (
    "feature_geometry_train.png",
    "class_cosines_train.png",
    "feature_geometry_test.png",
    "class_cosines_test.png",
    "nc_curves.png",
)
