"""The abnormal-behaviour guard: shilling attacks as data, the profile features that tell fake profiles from
genuine ones, the detector fitted on them, and the guard's config."""
