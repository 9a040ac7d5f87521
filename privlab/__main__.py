from privlab.cli import main

if __name__ == "__main__":  # spawned worker processes (workers > 1) import this module too
    main()
