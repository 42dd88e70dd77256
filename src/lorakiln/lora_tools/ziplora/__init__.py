"""`lorakiln lora ziplora`: two LoRAs (subject and style) merged by per-column coefficients trained
against both (`train`), on hooked base layers (`modules`); `ziplora` runs it end to end.

Imports nothing, so importing a submodule stays as light as that submodule.
"""
