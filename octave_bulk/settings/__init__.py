"""Run settings: the fields by section (:mod:`.fields`), the checks and the loading from flags,
environment and TOML (:mod:`.model`), values written as text (:mod:`.values`), the TOML file
source (:mod:`.toml_file`) and the checks of Octave ids (:mod:`.ids`)."""

__all__: list[str] = []
