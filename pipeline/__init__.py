"""hpe-pipeline: head-pose (HPE-CogVLM) and human-pose (VLPose) reproduction as one DAG."""

__version__ = "0.1.0"
