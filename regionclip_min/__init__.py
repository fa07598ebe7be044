"""regionclip-min: a small, readable RegionCLIP (Zhong et al., CVPR 2022, arXiv 2112.09106).

One module per component; see README.md for the map from the paper's terms to files and tests.
"""
