"""Fakes of the outside services Pigeon talks to, served over real HTTP on loopback."""
