from importlib.metadata import distributions

OUR_PACKAGES = {"config", "workers", "tasks", "scoring"}


def test_no_dependency_installs_a_top_level_package_named_like_ours():
    clashes = set()
    for dist in distributions():
        if dist.metadata["Name"] == "framefleet":
            continue
        for path in dist.files or []:
            if path.parts and path.parts[0] in OUR_PACKAGES:
                clashes.add((dist.metadata["Name"], path.parts[0]))
    assert not clashes
