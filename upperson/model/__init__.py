"""The UP-Person model on an open_clip backbone."""

from upperson.model.upperson import UPPerson, build_model, component_of

__all__ = ["UPPerson", "build_model", "component_of"]
