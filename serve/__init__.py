"""The Ray Serve retrieval application and its web page; arrives with the serving issue."""
