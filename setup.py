"""Installs the `dt2it_mrm` package generated from the notebooks in `nbs/`; metadata comes from settings.ini."""
from configparser import ConfigParser
from setuptools import find_packages, setup

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    author=cfg["author"],
    license=cfg["license"],
    python_requires=f">={cfg['min_python']}",
    packages=find_packages(include=[cfg["lib_path"], cfg["lib_path"] + ".*"]),
    install_requires=[],  # pinned in requirements.txt, installed by the Makefile
    entry_points={"console_scripts": ["dt2it-stage=dt2it_mrm.core:main", "dt2it-score=dt2it_mrm.score:main"]},
)
