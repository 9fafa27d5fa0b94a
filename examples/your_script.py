"""The user guide's example, as written: only the import changes (``from hparam_joblib import ...``).

Run from the repository root:  python examples/your_script.py
It reads config/config.yaml and writes optuna_studies/ImageNet_exp_first_sweep.db.
"""
# your_script.py
import time
from hparam_joblib import hparam_search

def train_model(config: dict) -> float:
    """
    A dummy training function.
    - Receives a configuration dictionary with all hyperparameters.
    - Returns the value to optimize (e.g., loss).
    """
    print(f"\n--- Starting Trial ---")
    print(f"  - Learning Rate: {config['learning_rate']}")
    print(f"  - Optimizer: {config['optimizer']}")
    print(f"  - Epochs: {config['num_epochs']}")
    print(f"  - Hidden Layers: {config['hidden_layers']}")
    
    # Simulate a training process
    time.sleep(2)
    
    # Example: calculate a dummy loss based on the parameters
    loss = 1.0 / config['learning_rate'] + (5 - config['hidden_layers'])**2
    
    print(f"  - Final Loss: {loss:.4f}")
    print(f"--- Finished Trial ---\n")
    
    return loss # This is the value Optuna will try to minimize.

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config: dict) -> float:
    """
    Main function to run the training with hyperparameter search.
    This function will be called by the decorator.
    """
    return train_model(config)

if __name__ == "__main__":
    train()

