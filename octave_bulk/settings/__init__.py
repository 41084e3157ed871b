"""Run settings: the model built once from flags, environment and TOML (:mod:`.model`), the
TOML file source (:mod:`.toml_file`) and the checks of Octave ids (:mod:`.ids`)."""

__all__: list[str] = []
