"""kvstate: XBlock learner state in a relational database, a drop-in for Open edX's state layer."""

__version__ = "0.1.0"
